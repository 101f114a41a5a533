import pytest
from django.db import connections
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_reports_ok_when_postgres_and_redis_answer(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_is_503_when_redis_is_down(client: Client, settings) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"socket_connect_timeout": 0.2},
        }
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"] == "unreachable"
    assert response.json()["postgres"] == "ok"


def test_healthz_is_503_when_postgres_is_down(client: Client) -> None:
    connection = connections["default"]
    saved = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = "1"
    connection.close()
    try:
        response = client.get("/healthz")
    finally:
        connection.settings_dict["PORT"] = saved
        connection.close()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "postgres": "unreachable", "redis": "ok"}


def test_healthz_wrong_method(client: Client) -> None:
    assert client.post("/healthz").status_code == 405
