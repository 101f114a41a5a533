from datetime import UTC, datetime, time, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.utils import timezone

from clinik.usage import queries

STATUS_CHOICES = [
    ("", "Any status"),
    ("2xx", "2xx"),
    ("3xx", "3xx"),
    ("4xx", "4xx"),
    ("5xx", "5xx"),
]
METHOD_CHOICES = [("", "Any method")] + [
    (m, m) for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
]


class RangeForm(forms.Form):
    range = forms.ChoiceField(
        choices=[(k, v[0]) for k, v in queries.RANGES.items()] + [("custom", "Custom")],
        required=False,
    )
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def resolve(self) -> queries.Range:
        now = timezone.now()
        data = self.cleaned_data if self.is_valid() else {}
        key = data.get("range") or "24h"
        if key == "custom" and data.get("start"):
            start = datetime.combine(data["start"], time.min, UTC)
            end_day = data.get("end") or now.date()
            end = datetime.combine(end_day, time.min, UTC) + timedelta(days=1)
            return queries.custom(start, end, now, settings.USAGE_RETENTION_DAYS)
        return queries.preset(key if key in queries.RANGES else "24h", now)


class LogFilterForm(forms.Form):
    """The request log table's filters; times are UTC."""

    status = forms.CharField(required=False, max_length=3)
    method = forms.ChoiceField(choices=METHOD_CHOICES, required=False)
    route = forms.CharField(required=False, max_length=160)
    key = forms.IntegerField(required=False, min_value=1)
    since = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    request_id = forms.CharField(required=False, max_length=64)

    def clean_status(self) -> str:
        value = self.cleaned_data["status"].strip().lower()
        if (
            value
            and value not in queries.STATUS_CLASSES
            and not (value.isdigit() and 100 <= int(value) <= 599)
        ):
            raise forms.ValidationError("A status code (404) or class (4xx).")
        return value

    def to_filter(self, default: queries.Range) -> queries.LogFilter:
        data: dict[str, Any] = self.cleaned_data if self.is_valid() else {}
        since = _utc(data.get("since")) or default.start
        until = _utc(data.get("until")) or default.end
        return queries.LogFilter(
            since=since,
            until=until,
            status=data.get("status") or "",
            method=data.get("method") or "",
            route=(data.get("route") or "").strip(),
            key_id=data.get("key"),
            request_id=(data.get("request_id") or "").strip(),
        )


def _utc(value: datetime | None) -> datetime | None:
    """datetime-local inputs carry no zone: the page says they are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if timezone.is_naive(value) else value.astimezone(UTC)
