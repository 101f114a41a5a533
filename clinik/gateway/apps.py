from typing import Any

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "clinik.gateway"
    label = "gateway"

    def ready(self) -> None:
        from clinik.billing.models import limits_changed

        limits_changed.connect(_forget_limits, dispatch_uid="gateway_forget_limits")


def _forget_limits(sender: Any, org_id: Any, **kwargs: Any) -> None:
    from clinik.gateway.limits import forget

    forget(org_id)
