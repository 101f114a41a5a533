from django.contrib import admin

from clinik.privacy.models import PolicyVersion


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin[PolicyVersion]):
    list_display = ("version", "last_updated", "effective_on")
