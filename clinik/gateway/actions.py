from django.db import transaction
from django.http import HttpRequest

from clinik import audit
from clinik.accounts.models import Organization, User
from clinik.gateway.models import AllowedOrigin


@transaction.atomic(durable=True)
def do_allow_origin(
    *, org: Organization, origin: str, actor: User, request: HttpRequest | None
) -> AllowedOrigin:
    org.lock_writable()
    allowed = AllowedOrigin.objects.create(org=org, origin=origin)
    audit.record("cors.origin_add", org=org, actor=actor, target=allowed, request=request)
    return allowed


@transaction.atomic(durable=True)
def do_remove_origin(*, allowed: AllowedOrigin, actor: User, request: HttpRequest | None) -> None:
    allowed.org.lock_writable()
    audit.record(
        "cors.origin_remove", org=allowed.org, actor=actor, target=allowed, request=request
    )
    allowed.delete()
