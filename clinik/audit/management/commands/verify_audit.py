"""`python manage.py verify_audit [--org ID]`: seal what is committed, then walk each
organization's hash chain from its anchor and report the first broken link.
Exits 1 when any chain is broken."""

from typing import Any
from uuid import UUID

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clinik.audit import seal


class Command(BaseCommand):
    help = "Verify the audit trail's hash chains and report the first broken link."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", help="one organization's id (or 'none' for org-less events)")
        parser.add_argument(
            "--no-seal", action="store_true", help="verify only; do not seal new events first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org: str | None = options["org"]
        if org and org != seal.NO_ORG:
            try:
                org = str(UUID(org))
            except ValueError:
                raise CommandError(f"--org must be an organization id, got {org!r}") from None
        if not options["no_seal"]:
            seal.seal_all()
        broken = 0
        for chain in seal.chains(org):
            checked, problem = seal.verify(chain)
            if problem is None:
                self.stdout.write(f"chain {chain}: ok ({checked} links)")
            else:
                broken += 1
                self.stdout.write(f"BROKEN {problem}")
        stray = seal.unsealed_below_watermark(None if org is None else org)
        if stray:
            broken += 1
            self.stdout.write(f"BROKEN events inserted behind the sealer: {stray}")
        if broken:
            raise CommandError(f"{broken} problem(s) found in the audit trail")
        self.stdout.write("audit trail verified")
