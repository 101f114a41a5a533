from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "clinik.accounts"
    label = "accounts"

    def ready(self) -> None:
        from clinik.lib.dbroles import grant_app_privileges

        post_migrate.connect(grant_app_privileges, dispatch_uid="grant_app_privileges")
