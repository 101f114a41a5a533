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
from datetime import UTC, datetime
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


def calendar_month(now: datetime | None = None) -> Period:
    moment = (now or timezone.now()).astimezone(UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, add_months(start, 1)


def period_of(account: Account | None, now: datetime | None = None) -> Period:
    """The billing period that contains `now` for this account (None: no account)."""
    now = now or timezone.now()
    if (
        account is None
        or not account.stripe_subscription_id
        or account.current_period_start is None
        or account.current_period_end is None
    ):
        return calendar_month(now)
    start, end = account.current_period_start, account.current_period_end
    if now < end:
        return start, end
    # Renewed at Stripe, not yet told to us: the next periods start at `end`, then
    # every month from the anchor (`start`).
    months = 2
    while add_months(start, months) <= now:
        end, months = add_months(start, months), months + 1
    return end, add_months(start, months)


def current_period(org_id: Any, now: datetime | None = None) -> Period:
    account = Account.objects.filter(org_id=org_id).first()
    return period_of(account, now)
