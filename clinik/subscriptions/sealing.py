"""Signing secrets sealed at rest.

A subscription's signing secret (`whsec_...`) signs its deliveries with HMAC-SHA256, so
it cannot be hashed: the database holds it encrypted (Fernet: AES-128-CBC + HMAC-SHA256)
with the keys of SUBSCRIPTIONS_SECRET_KEYS. The first key seals, every key unseals, so
a new key goes first, the old one stays listed until `manage.py subscriptions_reseal`
has moved every row to the new one. Without the setting (development only: production
refuses to start), the key is derived from SECRET_KEY with HKDF.

The trigger that mirrors a Subscription resource writes no secret (the database never
sees one in plain text): the first delivery or the first "show secret" makes one here.
Plain text exists only in the delivery signing path and in the one answer showing it.
"""

import base64
from secrets import token_hex
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

if TYPE_CHECKING:
    from clinik.subscriptions.models import Subscription

PREFIX = "whsec_"


class SecretUnavailable(Exception):
    """A stored secret that none of SUBSCRIPTIONS_SECRET_KEYS opens."""


def development_key(secret_key: str) -> str:
    """The Fernet key derived from SECRET_KEY when SUBSCRIPTIONS_SECRET_KEYS is unset."""
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"clinik.subscriptions.secret"
    ).derive(secret_key.encode())
    return base64.urlsafe_b64encode(raw).decode()


def configured_keys() -> list[str]:
    return list(settings.SUBSCRIPTIONS_SECRET_KEYS) or [development_key(settings.SECRET_KEY)]


def _keys() -> MultiFernet:
    return MultiFernet([Fernet(key) for key in configured_keys()])


def seal(secret: str) -> str:
    return _keys().encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    try:
        return _keys().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable(
            "a signing secret is sealed with a key not in SUBSCRIPTIONS_SECRET_KEYS"
        ) from None


def sealed_with_current_key(sealed: str) -> bool:
    try:
        Fernet(configured_keys()[0]).decrypt(sealed.encode())
    except InvalidToken:
        return False
    return True


def reseal(sealed: str) -> str:
    """The same secret sealed with the first key (raises SecretUnavailable)."""
    try:
        return _keys().rotate(sealed.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable(
            "a signing secret is sealed with a key not in SUBSCRIPTIONS_SECRET_KEYS"
        ) from None


def new_secret() -> str:
    return f"{PREFIX}{token_hex(32)}"


def signing_secret(subscription: "Subscription") -> str:
    """The subscription's secret in plain text, made (and sealed) now if it has none
    yet. Concurrent callers agree: only the first one's secret is stored."""
    from clinik.subscriptions.models import Subscription

    if not subscription.secret:
        sealed = seal(new_secret())
        Subscription.objects.filter(pk=subscription.pk, secret="").update(secret=sealed)
        stored = Subscription.objects.filter(pk=subscription.pk).values_list("secret", flat=True)
        subscription.secret = stored.first() or sealed
    return unseal(subscription.secret)
