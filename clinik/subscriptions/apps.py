from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "clinik.subscriptions"
    label = "subscriptions"

    def ready(self) -> None:
        from clinik.fhir.validation import RESOURCE_CHECKS
        from clinik.subscriptions import checks  # noqa: F401 (registers the checks)
        from clinik.subscriptions.dispatch import check_resource

        RESOURCE_CHECKS["Subscription"] = check_resource
