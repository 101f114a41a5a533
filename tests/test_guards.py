"""Guard tests: migrations, every argument-free URL, production checks, database role."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "k3y-Fr0m-a-Vault-9f8e7d6c5b4a3928171605f4e3d2c1b0a9988776655443322",
    "ALLOWED_HOSTS": "api.clinikapi.com",
    "DATABASE_URL": "postgres://clinik:pw@db.internal:5432/clinik",
    "SITE_URL": "https://api.clinikapi.com",
    "CLINIK_TESTING": "0",
    "SUBSCRIPTIONS_SECRET_KEYS": "V3bhO0aUYvB8pIYkJ5iQq0m7Yb3mJ0aR2vX9cQ4fN1k=",
}


@pytest.mark.django_db
def test_no_missing_migrations() -> None:
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)


def _argument_free_urls(resolver: URLResolver | None = None, prefix: str = "") -> list[str]:
    resolver = resolver or get_resolver()
    found = []
    for pattern in resolver.url_patterns:
        route = prefix + str(pattern.pattern)
        if "<" in route or "^" in route:
            continue
        if isinstance(pattern, URLResolver):
            found.extend(_argument_free_urls(pattern, route))
        elif isinstance(pattern, URLPattern):
            found.append("/" + route)
    return found


@pytest.mark.django_db
def test_every_argument_free_url_renders(owner) -> None:
    urls = [u for u in _argument_free_urls() if not u.startswith("/staff/")]
    assert "/privacy" in urls and "/healthz" in urls
    for client in (Client(), owner.client()):
        for url in urls:
            response = client.get(url)
            assert response.status_code in (200, 302, 401, 405), (url, response.status_code)


def _run_with_production_env(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUG", "DATABASE"))}
    env.update(PRODUCTION_ENV)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_under_production_settings() -> None:
    result = _run_with_production_env("check", "--deploy", "--fail-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_plaintext_database_connections() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, **PRODUCTION_ENV, "DATABASE_SSLMODE": "disable"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DATABASE_SSLMODE must require TLS" in result.stderr


def test_production_requires_a_secret_key() -> None:
    env = {**os.environ, **PRODUCTION_ENV}
    del env["SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "clinik.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SECRET_KEY must be set" in result.stderr


def test_production_hashes_passwords_with_argon2() -> None:
    code = "from django.conf import settings; print(settings.PASSWORD_HASHERS[0])"
    result = _run_with_production_env("shell", "--no-imports", "-c", code)
    assert result.stdout.strip() == "django.contrib.auth.hashers.Argon2PasswordHasher"


@pytest.mark.django_db
def test_application_role_is_ordinary() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles"
            " WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, False, False)
        cursor.execute(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname = 'public' AND tableowner = current_user"
        )
        assert cursor.fetchone() == (0,)
