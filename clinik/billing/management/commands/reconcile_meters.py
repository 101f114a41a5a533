import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from clinik.billing import meters


class Command(BaseCommand):
    help = (
        "Compare the overage our usage rollups give with what was claimed and sent to"
        " Stripe's meter, per organization, for a calendar month (UTC). Prints one JSON"
        " line per difference and exits 1 if there is any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", default=None, help="YYYY-MM (default: this month)")
        parser.add_argument("--now", default=None, help="ISO time, as given to report_meters")

    def handle(self, *args: Any, month: str | None, now: str | None, **opts: Any) -> None:
        try:
            start = (
                datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
                if month
                else meters.month_start(datetime.fromisoformat(now) if now else timezone.now())
            )
        except ValueError:
            raise CommandError(f"--month must be YYYY-MM, got {month!r}") from None
        # up to the last hour the reporter considers finished
        end = min(
            meters.month_start(start + timedelta(days=32)),
            meters.finished_until(datetime.fromisoformat(now) if now else None),
        )
        differences = meters.reconcile(start, end)
        for row in differences:
            self.stdout.write(json.dumps(row))
        self.stderr.write(f"{len(differences)} organization(s) differ")
        if differences:
            raise SystemExit(1)
