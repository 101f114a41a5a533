"""Staff open, update and resolve incidents; publish privacy policy versions; see
(read-only) which emails went out. Staff actions are audited by clinik.audit.staff."""

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from clinik.notify import incidents, policy
from clinik.notify.models import Component, EmailRecord, Incident
from clinik.privacy.models import PolicyVersion


class IncidentForm(forms.ModelForm[Incident]):
    components = forms.MultipleChoiceField(
        choices=Component.choices, widget=forms.CheckboxSelectMultiple
    )
    message = forms.CharField(
        widget=forms.Textarea, help_text="What customers read: on /status and in the emails."
    )

    class Meta:
        model = Incident
        fields = ["title", "status", "components", "message", "affected_orgs"]
        help_texts = {"affected_orgs": "None chosen: every organization's owners are emailed."}


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin[Incident]):
    form = IncidentForm
    list_display = ("title", "status", "opened_at", "resolved_at")
    list_filter = ("status",)
    filter_horizontal = ("affected_orgs",)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        incidents.note_change(form.instance, message=form.cleaned_data["message"])


class PolicyVersionForm(forms.ModelForm[PolicyVersion]):
    class Meta:
        model = PolicyVersion
        fields = ["version", "last_updated", "effective_on", "summary", "template_name"]

    def clean_effective_on(self) -> Any:
        effective_on = self.cleaned_data["effective_on"]
        if self.instance.pk is None or effective_on != self.instance.effective_on:
            try:
                policy.check_effective_date(effective_on)
            except policy.TooSoon as exc:
                raise forms.ValidationError(str(exc)) from None
        return effective_on


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin[PolicyVersion]):
    form = PolicyVersionForm
    list_display = ("version", "last_updated", "effective_on")

    def save_model(self, request: HttpRequest, obj: PolicyVersion, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        policy.schedule_announcement(obj)


@admin.register(EmailRecord)
class EmailRecordAdmin(admin.ModelAdmin[EmailRecord]):
    list_display = ("created_at", "kind", "template", "user_id", "status", "attempts")
    list_filter = ("kind", "status", "template")
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
