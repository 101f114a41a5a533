"""Counts on the dashboard carry thousands separators (83,372, not 83372); the
landing page's curl example uses SITE_URL (http in development)."""

from datetime import UTC, datetime

import pytest
from django.test import Client

from clinik.usage import histogram
from clinik.usage.charts import grouped
from clinik.usage.models import HourlyUsage
from tests.conftest import Persona

pytestmark = pytest.mark.django_db


def test_the_usage_page_groups_thousands(owner: Persona) -> None:
    bucket = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hist = [0] * histogram.SIZE
    hist[0] = 83372
    for dim, route in (("all", ""), ("route", "/fhir/R4/Patient")):
        HourlyUsage.objects.create(
            org_id=owner.org.pk,
            dim=dim,
            bucket=bucket,
            route=route,
            method="GET" if route else "",
            requests=83372,
            client_errors=12345,
            throttled=1001,
            hist=hist,
        )
    html = owner.client().get(f"/o/{owner.org.pk}/usage/").content.decode()
    assert '<span class="stat-value">83,372</span>' in html
    assert '<span class="stat-value">1,001</span>' in html  # rate-limited
    assert '<td class="num">83,372</td>' in html  # the routes table
    assert "83,372 requests — 71,027 ok, 12,345 4xx (1,001 rate-limited)" in html  # chart
    assert "83372" not in html


def test_grouped_keeps_fractions_and_small_numbers() -> None:
    assert [grouped(v) for v in (0, 999, 1000.0, 2500.5, 83372)] == [
        "0",
        "999",
        "1,000",
        "2,500.5",
        "83,372",
    ]


def test_the_landing_curl_example_uses_site_url(client: Client, settings) -> None:
    settings.SITE_URL = "http://127.0.0.1:8000"  # the development default
    assert "curl -s http://127.0.0.1:8000/fhir/R4/Patient" in client.get("/").content.decode()
    settings.SITE_URL = "https://api.clinik.example"
    html = client.get("/").content.decode()  # Host: testserver
    assert "curl -s https://api.clinik.example/fhir/R4/Patient" in html
    assert "testserver" not in html
