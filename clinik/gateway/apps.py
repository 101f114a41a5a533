from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "clinik.gateway"
    label = "gateway"
