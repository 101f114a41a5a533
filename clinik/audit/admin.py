from django.contrib import admin

from clinik.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = ("time", "action", "outcome", "org_id", "actor_type", "actor_id", "target_type")
    list_filter = ("outcome", "action")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
