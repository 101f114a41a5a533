"""Staff see pending closures and account deletions with their deadlines, and export
jobs (metadata only). Nothing here is editable: the jobs own these rows."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from clinik.privacy.models import AccountDeletion, Closure, ExportJob

# Policy versions are published in clinik/notify/admin.py (30 days' notice, emails).


class ReadOnlyAdmin[M: Any](admin.ModelAdmin[M]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Closure)
class ClosureAdmin(ReadOnlyAdmin[Closure]):
    list_display = (
        "org_id",
        "status",
        "requested_at",
        "scheduled_for",
        "deadline",
        "completed_at",
    )
    list_filter = ("status",)
    ordering = ("deadline",)
    exclude = ("notify_emails", "org_name")
    search_fields = ("org__id",)


@admin.register(AccountDeletion)
class AccountDeletionAdmin(ReadOnlyAdmin[AccountDeletion]):
    list_display = (
        "user_id",
        "status",
        "requested_at",
        "scheduled_for",
        "deadline",
        "completed_at",
    )
    list_filter = ("status",)
    ordering = ("deadline",)
    exclude = ("notify_email",)


@admin.register(ExportJob)
class ExportJobAdmin(ReadOnlyAdmin[ExportJob]):
    list_display = ("id", "org_id", "kind", "status", "exported", "created_at", "expires_at")
    list_filter = ("status", "kind")
