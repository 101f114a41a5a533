import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from clinik.billing import meters, stripe_api


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
        " at --now. With --against-stripe, compares what we marked sent with what"
        " Stripe's meter holds (its event summaries, hour by hour) instead: an event"
        " Stripe dropped after accepting it (unknown customer, too old) shows there."
        " Prints one JSON line per difference and exits 1 if there is any."
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
        parser.add_argument(
            "--against-stripe",
            action="store_true",
            help="compare our ledger's sent hours with Stripe's meter event summaries"
            " (hours sent in the 15 minutes before --now are left out)",
        )
        parser.add_argument(
            "--resend",
            action="store_true",
            help="with --against-stripe: mark the hours Stripe holds nothing of unsent,"
            " so that the next report_meters sends them again (same identifiers)",
        )

    def handle(
        self,
        *args: Any,
        period_of: str | None,
        now: str | None,
        against_stripe: bool = False,
        resend: bool = False,
        **opts: Any,
    ) -> None:
        at_now = _moment("--now", now) or timezone.now()
        at = _moment("--period-of", period_of) or at_now
        if resend and not against_stripe:
            raise CommandError("--resend goes with --against-stripe")
        if against_stripe:
            try:
                differences = meters.reconcile_with_stripe(
                    at, meters.finished_until(at_now), at_now, resend=resend
                )
            except (stripe_api.BillingOff, meters.NoMeter) as error:
                raise CommandError(str(error)) from None
        else:
            differences = meters.reconcile(at, meters.finished_until(at_now))
        for row in differences:
            self.stdout.write(json.dumps(row))
        self.stderr.write(f"{len(differences)} organization(s) differ")
        if differences:
            raise SystemExit(1)
