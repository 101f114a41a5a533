import pytest
from django.test import Client


@pytest.mark.django_db
def test_healthz_reports_ok_when_postgres_and_redis_answer(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
