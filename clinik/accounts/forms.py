from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import password_validation

from clinik.accounts.models import Membership, User, normalize_email
from clinik.notify.emails import send


class SignUpForm(forms.Form):
    name = forms.CharField(max_length=150, label="Your name")
    email = forms.EmailField(max_length=254)
    org_name = forms.CharField(max_length=100, label="Organization name")
    password = forms.CharField(widget=forms.PasswordInput, strip=False)

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email=email).exists():
            raise forms.ValidationError(
                "An account with this email already exists. Sign in or reset your password."
            )
        return email

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        password = data.get("password")
        if password:
            probe = User(email=data.get("email", ""), name=data.get("name", ""))
            try:
                password_validation.validate_password(password, probe)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data


class SignInForm(forms.Form):
    email = forms.EmailField(max_length=254)
    password = forms.CharField(widget=forms.PasswordInput, strip=False)


class ProfileForm(forms.Form):
    name = forms.CharField(max_length=150)
    email = forms.EmailField(max_length=254)
    current_password = forms.CharField(
        widget=forms.PasswordInput,
        strip=False,
        required=False,
        help_text="Needed to change your email address.",
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        if email != self.user.email and User.objects.filter(email=email).exists():
            raise forms.ValidationError("Another account uses this email address.")
        return email

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        email = data.get("email")
        needs_password = email and email != self.user.email and self.user.has_usable_password()
        if needs_password and not self.user.check_password(data.get("current_password") or ""):
            self.add_error("current_password", "Enter your current password.")
        return data


class OrganizationForm(forms.Form):
    name = forms.CharField(max_length=100, label="Organization name")


class InviteForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.DEVELOPER)

    def __init__(self, *args: Any, membership: Membership, **kwargs: Any) -> None:
        self.membership = membership
        super().__init__(*args, **kwargs)
        allowed = set(membership.assignable_roles())
        self.fields["role"].choices = [  # type: ignore[attr-defined]
            choice for choice in Membership.Role.choices if choice[0] in allowed
        ]

    def clean_email(self) -> str:
        email = normalize_email(self.cleaned_data["email"])
        org = self.membership.org
        if Membership.objects.filter(org=org, user__email=email).exists():
            raise forms.ValidationError("This person is already a member.")
        return email


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)

    def __init__(self, *args: Any, membership: Membership, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        allowed = set(membership.assignable_roles())
        self.fields["role"].choices = [  # type: ignore[attr-defined]
            choice for choice in Membership.Role.choices if choice[0] in allowed
        ]


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's form, with the link sent through clinik.notify (recorded, retried)."""

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        keep = ("email", "protocol", "domain", "uid", "token")
        send("security", "password-reset", context["user"], {k: context[k] for k in keep})


class SupabaseSignUpForm(SignUpForm):
    """Sign-up through Supabase Auth: an existing email is not refused here (the
    answer must not say whether it exists); proving the email links the account."""

    def clean_email(self) -> str:
        return normalize_email(self.cleaned_data["email"])


class EmailForm(forms.Form):
    email = forms.EmailField(max_length=254)
