from django import forms

from clinik.billing.models import Plan


class PlanChoiceForm(forms.Form):
    plan = forms.SlugField()

    def clean_plan(self) -> Plan:
        plan = Plan.objects.filter(slug=self.cleaned_data["plan"], is_public=True).first()
        if plan is None:
            raise forms.ValidationError("No such plan.")
        if not plan.is_paid:
            raise forms.ValidationError(
                f"The {plan.name} plan cannot be bought: to move to it, cancel the "
                "subscription in the billing portal."
            )
        return plan
