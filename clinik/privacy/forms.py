from typing import Any

from django import forms

from clinik.accounts.models import Organization, User, normalize_email


class CloseForm(forms.Form):
    """Typed confirmation: the organization's exact name."""

    confirm_name = forms.CharField(
        max_length=100, label="Type the organization's name to confirm", strip=True
    )

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        self.org = org
        super().__init__(*args, **kwargs)

    def clean_confirm_name(self) -> str:
        name = str(self.cleaned_data["confirm_name"])
        if name != self.org.name:
            raise forms.ValidationError("This is not the organization's name.")
        return name


class DeleteAccountForm(forms.Form):
    """Typed confirmation: the user's email address."""

    confirm_email = forms.CharField(max_length=254, label="Type your email address to confirm")

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_confirm_email(self) -> str:
        email = normalize_email(str(self.cleaned_data["confirm_email"]))
        if email != self.user.email:
            raise forms.ValidationError("This is not your email address.")
        return email


class AnalyticsForm(forms.Form):
    opt_out = forms.BooleanField(required=False)
