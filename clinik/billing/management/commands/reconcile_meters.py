import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from clinik.billing import meters


def _moment(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} must be an ISO time, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Compare the overage our usage rollups give with what was claimed and sent to"
        " Stripe's meter, per organization, over its billing period (Stripe's"
        " subscription period, else the calendar month, UTC) that contains --period-of"
        " (default: --now, else now), up to the last hour the reporter considers finished"
        " at --now. Prints one JSON line per difference and exits 1 if there is any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--period-of",
            default=None,
            metavar="ISO-TIME",
            help="each organization's billing period containing this moment"
            " (e.g. 2026-11-01T00:00Z for last month's calendar-month organizations;"
            " default: --now)",
        )
        parser.add_argument("--now", default=None, help="ISO time, as given to report_meters")

    def handle(self, *args: Any, period_of: str | None, now: str | None, **opts: Any) -> None:
        at_now = _moment("--now", now) or timezone.now()
        at = _moment("--period-of", period_of) or at_now
        differences = meters.reconcile(at, meters.finished_until(at_now))
        for row in differences:
            self.stdout.write(json.dumps(row))
        self.stderr.write(f"{len(differences)} organization(s) differ")
        if differences:
            raise SystemExit(1)
