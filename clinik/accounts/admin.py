from django.contrib import admin

from clinik.accounts.models import Invitation, Membership, Organization, User


@admin.register(User)
class UserAdmin(admin.ModelAdmin[User]):
    list_display = ("email", "name", "is_active", "is_staff", "date_joined")
    search_fields = ("email", "name")
    exclude = ("password",)
    readonly_fields = ("last_login", "date_joined")


class MembershipInline(admin.TabularInline[Membership, Organization]):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin[Organization]):
    list_display = ("name", "id", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "id")
    inlines = [MembershipInline]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin[Invitation]):
    list_display = ("email", "org", "role", "created_at", "expires_at", "accepted_at")
    exclude = ("token_hash",)
