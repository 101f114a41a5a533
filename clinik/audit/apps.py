from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "clinik.audit"
    label = "audit"
