from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "clinik.subscriptions"
    label = "subscriptions"
