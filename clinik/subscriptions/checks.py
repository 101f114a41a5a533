"""System checks of the sealed signing secrets (clinik.subscriptions.sealing).

`check --deploy`: SUBSCRIPTIONS_SECRET_KEYS must be set (production settings refuse to
start without it anyway). With a database (`check --database default`, `migrate`): every
stored secret must open with the configured keys (an error otherwise, before any
delivery fails), and one sealed with an older key is a warning to run
`manage.py subscriptions_reseal`."""

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register("clinik", deploy=True)
def secret_keys_configured(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.SUBSCRIPTIONS_SECRET_KEYS:
        return []
    return [
        Error(
            "SUBSCRIPTIONS_SECRET_KEYS is not set: webhook signing secrets are sealed with"
            " a key derived from SECRET_KEY",
            hint="Set it to a Fernet key (manage.py subscriptions_reseal --new-key)",
            id="clinik.E201",
        )
    ]


@register("clinik", "database")
def stored_secrets_readable(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    if not databases or "default" not in databases:
        return []
    from django.db import ProgrammingError

    from clinik.subscriptions import sealing
    from clinik.subscriptions.models import Subscription

    unreadable = old = plain = 0
    try:
        sealed = Subscription.objects.exclude(secret="").values_list("secret", flat=True)
        for secret in sealed.iterator():
            if secret.startswith(sealing.PREFIX):
                plain += 1  # before migration 0005: migrate seals them
                continue
            if sealing.sealed_with_current_key(secret):
                continue
            try:
                sealing.unseal(secret)
                old += 1
            except sealing.SecretUnavailable:
                unreadable += 1
    except ProgrammingError:
        return []  # not migrated yet: migrate runs this check again afterwards
    problems: list[CheckMessage] = []
    if unreadable:
        problems.append(
            Error(
                f"{unreadable} webhook signing secret(s) cannot be unsealed with"
                " SUBSCRIPTIONS_SECRET_KEYS: their deliveries cannot be signed",
                hint="Put back the key they were sealed with (any position after the first),"
                " or have their owners rotate the secret",
                id="clinik.E202",
            )
        )
    if plain:
        problems.append(
            Warning(
                f"{plain} webhook signing secret(s) are stored in plain text",
                hint="Run manage.py migrate subscriptions (migration 0005 seals them)",
                id="clinik.W204",
            )
        )
    if old:
        problems.append(
            Warning(
                f"{old} webhook signing secret(s) are sealed with an older key",
                hint="Run manage.py subscriptions_reseal, then drop the old key",
                id="clinik.W203",
            )
        )
    return problems
