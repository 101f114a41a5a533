from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from clinik.keys.models import ApiKey

EXPIRY_CHOICES = [
    ("never", "Never"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In 365 days"),
]


class KeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Where the key is used, e.g. “Staging server”."
    )
    scopes = forms.ChoiceField(
        choices=ApiKey.Scopes.choices, initial=ApiKey.Scopes.READ_WRITE, label="Access"
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, initial="90", label="Expires")

    def expires_at(self) -> datetime | None:
        choice = self.cleaned_data["expires"]
        if choice == "never":
            return None
        return timezone.now() + timedelta(days=int(choice))
