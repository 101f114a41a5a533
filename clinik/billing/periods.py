"""The billing period: what the monthly quota, the Billing page's usage and projected
cost count over.

- An organization with a live Stripe subscription follows the subscription's period
  (`current_period_start`/`current_period_end`, kept by the webhook processing,
  clinik.billing.webhooks.sync_customer). If the period we hold has ended and the
  renewal's webhook has not arrived yet, the period rolls forward by months from the
  subscription's anchor, as Stripe renews it.
- Every other organization (Free, billing off, a cancelled subscription) counts by
  calendar month, UTC: the 1st, 00:00. A calendar month is what Stripe's meter and our
  usage rollups already use for free organizations, and it needs no stored anchor.
"""

from calendar import monthrange
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from clinik.billing.models import Account

Period = tuple[datetime, datetime]


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, its day clamped to the month's last day (a
    period anchored on the 31st renews on the 30th, then the 28th or 29th in February),
    as Stripe renews a monthly subscription."""
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month = divmod(index, 12)
    day = min(anchor.day, monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def _anchor_day(start: datetime, end: datetime) -> int:
    """The day of the month a monthly subscription renews on, as one of its periods
    shows it: the later of its start's and end's day (a period Feb 28 - Mar 31 renews
    on the 31st; of two months in a row at most one is too short for the day)."""
    return max(start.day, end.day)


def _shift(anchor: datetime, day: int, months: int) -> datetime:
    """The anchor moved by whole months with `day` (the anchor's true day, possibly
    more than the anchor's month has) clamped to the target month's last day."""
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month = divmod(index, 12)
    return anchor.replace(year=year, month=month + 1, day=min(day, monthrange(year, month + 1)[1]))


def calendar_month(now: datetime | None = None) -> Period:
    moment = (now or timezone.now()).astimezone(UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, add_months(start, 1)


def period_of(account: Account | None, now: datetime | None = None) -> Period:
    """The billing period that contains `now` for this account (None: no account)."""
    now = now or timezone.now()
    if account is None or not _subscribed(account):
        return calendar_month(now)
    assert account.current_period_start is not None and account.current_period_end is not None
    start, end = account.current_period_start, account.current_period_end
    if now < end:
        return start, end
    # Renewed at Stripe, not yet told to us: the next periods start at `end`, then
    # every month from the anchor (`start`, on the day the period shows, _anchor_day).
    day = _anchor_day(start, end)
    months = 2
    while _shift(start, day, months) <= now:
        end, months = _shift(start, day, months), months + 1
    return end, _shift(start, day, months)


def _subscribed(account: Account | None) -> bool:
    return (
        account is not None
        and bool(account.stripe_subscription_id)
        and account.current_period_start is not None
        and account.current_period_end is not None
    )


def period_before(account: Account | None, period: Period) -> Period:
    """The billing period just before `period` (one that period_of gave for this
    account): it ends where `period` starts. A calendar month's is the month before; a
    subscription's starts a month before, on the anchor's day."""
    start, end = period
    if not _subscribed(account):
        return calendar_month(start - timedelta(microseconds=1))
    return _shift(start, _anchor_day(start, end), -1), start


def current_period(org_id: Any, now: datetime | None = None) -> Period:
    account = Account.objects.filter(org_id=org_id).first()
    return period_of(account, now)


def hour_of(moment: datetime) -> datetime:
    """The hour bucket a period boundary falls in (date_trunc('hour', ...), UTC): the
    first bucket of the period that starts at that moment."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def buckets(period: Period) -> tuple[datetime, datetime]:
    """The hour buckets [first, end) counted for a billing period, by the meter claims
    (clinik.billing.meters) and the Billing page alike: from the hour its start falls
    in to the hour the next period's start falls in. A period starting at 09:23 takes
    the whole 09:00 hour and the period before it ends at 09:00: consecutive periods
    share a boundary, so every hour is in exactly one of them."""
    return hour_of(period[0]), hour_of(period[1])
