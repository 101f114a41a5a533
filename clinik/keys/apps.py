from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "clinik.keys"
    label = "keys"
