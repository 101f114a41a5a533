from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "clinik.privacy"
    label = "privacy"
