import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_pages_carry_the_security_headers(client: Client) -> None:
    response = client.get("/accounts/signin/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "strict-origin-when-cross-origin"


def test_no_inline_scripts_or_styles_in_pages(client: Client, owner) -> None:
    pages = [Client().get(p).content for p in ("/", "/privacy", "/accounts/signup/")]
    pages.append(owner.client().get(f"/o/{owner.org.pk}/team/").content)
    for html in pages:
        assert b"<script>" not in html
        assert b" style=" not in html
        assert b"<style" not in html
        assert b"onclick=" not in html


def test_forms_are_csrf_protected(owner) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner.user)
    response = client.post(f"/o/{owner.org.pk}/settings/", {"name": "No token"})
    assert response.status_code == 403
    owner.org.refresh_from_db()
    assert owner.org.name == "Acme Health"


def test_404_page_is_generic(client: Client) -> None:
    response = client.get("/no/such/page?patient=Jane+Doe")
    assert response.status_code == 404
    assert b"Page not found" in response.content
    assert b"Jane" not in response.content
    assert b"Traceback" not in response.content
