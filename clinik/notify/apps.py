from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "clinik.notify"
    label = "notify"
