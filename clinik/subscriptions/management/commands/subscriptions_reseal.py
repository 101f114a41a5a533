"""After a key rotation (a new first key in SUBSCRIPTIONS_SECRET_KEYS, the old ones
still listed): seal every stored signing secret with the new key, so the old keys can
be dropped. Safe to rerun and to run while deliveries go on (a row rotated meanwhile by
its owner is left as it is). `--new-key` prints a fresh key and changes nothing."""

from typing import Any

from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand, CommandError, CommandParser

from clinik.subscriptions import sealing
from clinik.subscriptions.models import Subscription


class Command(BaseCommand):
    help = "Re-seal every webhook signing secret with the first key of SUBSCRIPTIONS_SECRET_KEYS."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--new-key", action="store_true", help="print a new Fernet key")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["new_key"]:
            self.stdout.write(Fernet.generate_key().decode())
            return
        moved = current = unreadable = 0
        rows = Subscription.objects.exclude(secret="").values_list("pk", "secret")
        for pk, secret in rows.iterator():
            if sealing.sealed_with_current_key(secret):
                current += 1
                continue
            try:
                resealed = sealing.reseal(secret)
            except sealing.SecretUnavailable:
                unreadable += 1
                continue
            moved += Subscription.objects.filter(pk=pk, secret=secret).update(secret=resealed)
        self.stdout.write(f"resealed {moved}, already current {current}, unreadable {unreadable}")
        if unreadable:
            raise CommandError(
                f"{unreadable} secret(s) open with none of SUBSCRIPTIONS_SECRET_KEYS"
            )
