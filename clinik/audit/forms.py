from datetime import UTC, datetime
from typing import Any

from django import forms
from django.utils import timezone

from clinik.audit.actions import ACTIONS
from clinik.audit.models import AuditEvent, AuditExport
from clinik.audit.query import AuditFilter


def action_choices() -> list[tuple[str, str]]:
    namespaces = sorted({name.split(".")[0] for name in ACTIONS})
    return [
        ("", "Any action"),
        *((f"{ns}.*", f"{ns}.* (all)") for ns in namespaces),
        *((name, name) for name in sorted(ACTIONS)),
    ]


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=80)
    action = forms.ChoiceField(required=False, choices=action_choices)
    target_type = forms.CharField(required=False, max_length=64)
    outcome = forms.ChoiceField(
        required=False, choices=[("", "Any outcome"), *AuditEvent.Outcome.choices]
    )
    since = forms.DateTimeField(required=False)
    until = forms.DateTimeField(required=False)
    request_id = forms.CharField(required=False, max_length=64)

    def clean_actor(self) -> str:
        value = self.cleaned_data["actor"].strip()
        kind, _, ident = value.partition(":")
        if value and kind not in ("user", "key", "system", "anonymous"):
            raise forms.ValidationError("Choose an actor from the list.")
        if ident and not ident.isdigit():
            raise forms.ValidationError("Choose an actor from the list.")
        return value

    def to_filter(self) -> AuditFilter:
        data: dict[str, Any] = self.cleaned_data if self.is_valid() else {}
        return AuditFilter(
            actor=data.get("actor") or "",
            action=data.get("action") or "",
            target_type=(data.get("target_type") or "").strip(),
            outcome=data.get("outcome") or "",
            since=_utc(data.get("since")),
            until=_utc(data.get("until")),
            request_id=(data.get("request_id") or "").strip(),
        )


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=AuditExport.Format.choices)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if timezone.is_naive(value) else value.astimezone(UTC)
