from typing import Any

from django import forms

from clinik.accounts.models import Organization
from clinik.gateway.models import MAX_ORIGINS_PER_ORG, AllowedOrigin, normalize_origin


class OriginForm(forms.Form):
    origin = forms.CharField(
        max_length=255,
        label="Allowed origin",
        help_text="Browser apps served from this origin may call the API, e.g. https://app.example.com",
    )

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        self.org = org
        super().__init__(*args, **kwargs)

    def clean_origin(self) -> str:
        origin = normalize_origin(self.cleaned_data["origin"])
        if origin is None:
            raise forms.ValidationError(
                "Enter an origin like https://app.example.com (scheme, host and optional port)."
            )
        existing = AllowedOrigin.objects.filter(org=self.org)
        if existing.filter(origin=origin).exists():
            raise forms.ValidationError("This origin is already allowed.")
        if existing.count() >= MAX_ORIGINS_PER_ORG:
            raise forms.ValidationError(f"At most {MAX_ORIGINS_PER_ORG} origins are allowed.")
        return origin
