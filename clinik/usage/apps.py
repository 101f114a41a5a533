from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "clinik.usage"
    label = "usage"

    def ready(self) -> None:
        from django.core.signals import got_request_exception

        from clinik.usage import requestlog

        got_request_exception.connect(requestlog.note_exception, dispatch_uid="usage_exception")
