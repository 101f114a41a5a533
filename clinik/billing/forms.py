from typing import Any

from django import forms

from clinik.billing.models import Plan


class PlanChoiceForm(forms.Form):
    """The plan of an Upgrade/Downgrade button (a hidden field: its errors are the
    form's own, shown above the page)."""

    plan = forms.SlugField(error_messages={"required": "Choose a plan."})

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        slug = data.get("plan")
        plan = Plan.objects.filter(slug=slug, is_public=True).first() if slug else None
        if plan is None:
            raise forms.ValidationError("No such plan.")
        if not plan.is_paid:
            raise forms.ValidationError(
                f"The {plan.name} plan cannot be bought: to move to it, cancel the "
                "subscription in the billing portal."
            )
        data["plan"] = plan
        return data
