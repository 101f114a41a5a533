"""On the HealthLake store (which reports no changes: no fhir_history, no outbox) a
Subscription is refused with a clear OperationOutcome, and /metadata does not list
the Subscription resource; on the PostgreSQL store it does, and says how it works."""

import json

import pytest

from tests.test_subscriptions_dispatch import subscription_body


def test_healthlake_refuses_subscriptions(api, healthlake) -> None:
    body = subscription_body("http://127.0.0.1:9/hook", "Observation")
    for response in (
        api.post("Subscription", body),
        api.put("Subscription/s1", {**body, "id": "s1"}),
    ):
        assert response.status_code == 400
        outcome = json.loads(response.content)
        assert outcome["resourceType"] == "OperationOutcome"
        [issue] = outcome["issue"]
        assert issue["code"] == "not-supported"
        assert "not available on this server's FHIR store" in issue["diagnostics"]
    assert healthlake.live(str(api.org.pk)) == []


def test_healthlake_metadata_lists_no_subscription(client, healthlake) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert "Subscription" not in types and "Observation" in types


@pytest.mark.django_db
def test_postgres_metadata_documents_subscriptions(client) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    [entry] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert "rest-hook" in entry["documentation"]
