import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.core.exceptions import PermissionDenied
from django.db import models
from django.utils import timezone


def normalize_email(email: str) -> str:
    return email.strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **fields: Any) -> "User":
        if not email:
            raise ValueError("A user needs an email address")
        user = self.model(email=normalize_email(email), **fields)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields: Any) -> "User":
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        return self.create_user(email, password, **fields)

    def get_by_natural_key(self, username: str | None) -> "User":
        return self.get(email=normalize_email(username or ""))


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in to the dashboard. Email is the login; the password
    may be unusable when sign-in happens through Supabase Auth (external_auth_id)."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150)
    external_auth_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    # Identities linked at the identity provider (email, github, google): a new one
    # triggers a security alert.
    auth_methods = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    analytics_opt_out = models.BooleanField(default=False)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["name"]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.email = normalize_email(self.email)
        super().save(*args, **kwargs)

    def get_full_name(self) -> str:
        return self.name

    def get_short_name(self) -> str:
        return self.name.split(" ")[0] if self.name else self.email


class OrganizationReadOnly(PermissionDenied):
    """The organization is closing: it can be read, not changed. A PermissionDenied, so a
    view that lets it through answers 403; deliberately not an OSError (the built-in
    PermissionError is one), which the Celery tasks retry on."""

    def __init__(self) -> None:
        super().__init__("This organization is closing and read-only")


class Organization(models.Model):
    """The tenant. Its id is the code of the tenant tag on every FHIR resource."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        CLOSING = "closing"
        CLOSED = "closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name

    def owners(self) -> models.QuerySet[User]:
        return User.objects.filter(
            memberships__org=self, memberships__role=Membership.Role.OWNER, is_active=True
        )

    def lock_writable(self) -> None:
        """Refuse any change to an organization that is not active (docs/architecture.md,
        "A closing organization is read-only"). Every action that changes one calls this
        first, inside its transaction: the row lock makes a closure requested meanwhile
        wait for the action to commit, or the action see the closure."""
        status = (
            Organization.objects.select_for_update(no_key=True)
            .filter(pk=self.pk)
            .values_list("status", flat=True)
            .first()
        )
        if status != self.Status.ACTIVE:
            raise OrganizationReadOnly


class MembershipQuerySet(models.QuerySet["Membership"]):
    def owners(self) -> "MembershipQuerySet":
        return self.filter(role=Membership.Role.OWNER)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        DEVELOPER = "developer", "Developer"
        BILLING = "billing", "Billing"

    user = models.ForeignKey(User, models.CASCADE, related_name="memberships")
    org = models.ForeignKey(Organization, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "org"], name="one_membership")]
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.org_id} as {self.role}"

    @property
    def can_manage(self) -> bool:
        """Owners and admins manage keys, members and settings."""
        return self.role in (self.Role.OWNER, self.Role.ADMIN)

    @property
    def can_bill(self) -> bool:
        """Owners and billing members see and change the plan and invoices."""
        return self.role in (self.Role.OWNER, self.Role.BILLING)

    def assignable_roles(self) -> list[str]:
        if self.role == self.Role.OWNER:
            return [r.value for r in self.Role]
        if self.role == self.Role.ADMIN:
            return [self.Role.ADMIN.value, self.Role.DEVELOPER.value]
        return []


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def pending(self) -> "InvitationQuerySet":
        return self.filter(accepted_at__isnull=True, expires_at__gt=timezone.now())


class Invitation(models.Model):
    """An invite by email. Only the SHA-256 of the link's token is stored."""

    org = models.ForeignKey(Organization, models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Membership.Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"invitation {self.pk} to {self.org_id}"

    @classmethod
    def issue(
        cls, org: Organization, email: str, role: str, invited_by: User
    ) -> tuple["Invitation", str]:
        token = secrets.token_urlsafe(32)
        invitation = cls.objects.create(
            org=org,
            email=normalize_email(email),
            role=role,
            token_hash=hash_token(token),
            invited_by=invited_by,
            expires_at=timezone.now() + timedelta(days=settings.INVITATION_DAYS),
        )
        return invitation, token

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()
