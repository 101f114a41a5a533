from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "clinik.billing"
    label = "billing"
