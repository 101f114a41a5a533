"""Webhook deliveries in the usage analytics: every attempt counted per organization
and period by outcome class (rollup dim `hook`), shown on the Usage page; counts and
latency only, never an endpoint or a resource; API request counts (and billing) are
untouched; a rebuild of the rollups from the request log keeps them."""

import json
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from clinik.subscriptions.tasks import dispatch_subscriptions
from clinik.usage import store as usage_store
from clinik.usage.models import DailyUsage, HourlyUsage
from tests.conftest import wait_for
from tests.test_subscriptions_dispatch import (
    observation,
    receiver,  # noqa: F401 - fixture
    settled,
    subscribe,
)


def hook_rows(model: type, org: object) -> list[tuple[int, int, int]]:
    return list(
        model.objects.filter(org_id=org.pk, dim="hook").values_list(  # type: ignore[attr-defined]
            "requests", "client_errors", "server_errors"
        )
    )


@pytest.mark.django_db(transaction=True)
@override_settings(SUBSCRIPTIONS_RETRY_BASE_MS=1, SUBSCRIPTIONS_RETRY_MAX_MS=2)
def test_every_attempt_is_counted_by_outcome_and_shown(
    api,
    owner,
    outsider_api,
    receiver,  # noqa: F811
):
    # First delivery: 503 then 200 (two attempts); second: 404 (one attempt, refused).
    receiver.statuses = [503, 200, 404]
    subscribe(api, f"{receiver.url}?token=s3cret-path", "Observation")
    api.post("Observation", observation("1"))
    assert wait_for(lambda: dispatch_subscriptions() >= 0 and settled(api.org))
    api.post("Observation", observation("2"))
    assert wait_for(lambda: dispatch_subscriptions() >= 0 and settled(api.org))
    assert len(receiver.requests) == 3

    assert hook_rows(HourlyUsage, api.org) == [(3, 1, 1)]
    assert hook_rows(DailyUsage, api.org) == [(3, 1, 1)]
    assert hook_rows(HourlyUsage, outsider_api.org) == []
    # API requests are counted apart (billing reads dim `all` only).
    requests_before = HourlyUsage.objects.filter(org_id=api.org.pk, dim="all").count()

    page = owner.client().get(f"/o/{owner.org.pk}/usage/").content.decode()
    section = page[page.index('id="webhook-deliveries"') :]
    assert "delivery attempts" in section and "chart-hooks" in section
    assert "3 delivery attempts — 1 delivered, 1 3xx/4xx, 1 5xx or no answer" in section
    assert "token=" not in page and "s3cret" not in page and "/hook" not in page
    assert receiver.url.split("//")[1].split("/")[0] not in page  # not even the host

    # A rebuild of the request rollups from the log keeps the delivery counts.
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    usage_store.rebuild_rollups(api.org.pk, today, today + timedelta(days=1))
    assert hook_rows(HourlyUsage, api.org) == [(3, 1, 1)]
    assert HourlyUsage.objects.filter(org_id=api.org.pk, dim="all").count() <= max(
        requests_before, 1
    )


def test_the_usage_page_says_when_there_were_no_deliveries(owner):
    page = owner.client().get(f"/o/{owner.org.pk}/usage/").content.decode()
    assert "No webhook deliveries in this range." in page


@pytest.mark.django_db
def test_a_delivery_without_an_answer_counts_as_failed(owner):
    usage_store.count_delivery(owner.org.pk, timezone.now(), None, None)
    usage_store.count_delivery(owner.org.pk, timezone.now(), 200, 12)
    assert hook_rows(HourlyUsage, owner.org) == [(2, 0, 1)]
    data = json.dumps(list(HourlyUsage.objects.filter(dim="hook").values("route", "method")))
    assert data == json.dumps([{"route": "", "method": ""}])
