import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from clinik.billing import meters


class Command(BaseCommand):
    help = (
        "Report overage of finished hours of the month to Stripe's meter (what the hourly"
        " beat job does); safe to rerun or run twice at once. Prints {claimed, sent}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--now", default=None, help="ISO time to report as of (backfill); default: now"
        )

    def handle(self, *args: Any, now: str | None, **opts: Any) -> None:
        try:
            moment = datetime.fromisoformat(now) if now else None
        except ValueError:
            raise CommandError(f"--now must be an ISO 8601 time, got {now!r}") from None
        self.stdout.write(json.dumps(meters.report(moment)))
