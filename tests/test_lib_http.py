"""clinik.lib.http.client_ip: the caller's address, behind trusted proxies or not."""

from typing import Any

import pytest
from django.test import RequestFactory, override_settings

from clinik.lib.http import client_ip

LB = "10.0.0.5"  # the load balancer, as the web process sees it


def ip(forwarded: str | None = None, remote: str = LB) -> str:
    meta: dict[str, Any] = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(RequestFactory().get("/", **meta))


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert ip("203.0.113.9") == LB
    assert ip() == LB


@override_settings(TRUSTED_PROXY_COUNT=1)
@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        # Entries left of ours are the client's to write: spoofing them changes nothing.
        ("1.1.1.1, 203.0.113.9", "203.0.113.9"),
        ("not-an-ip, 8.8.8.8,203.0.113.9", "203.0.113.9"),
        ("203.0.113.9:51234", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
    ],
)
def test_one_proxy_the_last_entry_is_the_client(forwarded: str, expected: str) -> None:
    assert ip(forwarded) == expected


@override_settings(TRUSTED_PROXY_COUNT=2)
def test_two_proxies_the_second_entry_from_the_right_is_the_client() -> None:
    # The client, then the CDN's address as the load balancer saw it.
    assert ip("6.6.6.6, 203.0.113.9, 198.51.100.2") == "203.0.113.9"


@override_settings(TRUSTED_PROXY_COUNT=2)
@pytest.mark.parametrize("forwarded", [None, "", "203.0.113.9"])
def test_a_header_that_did_not_pass_our_proxies_falls_back_to_the_connection(
    forwarded: str | None,
) -> None:
    assert ip(forwarded) == LB


@override_settings(TRUSTED_PROXY_COUNT=1)
@pytest.mark.parametrize("forwarded", ["", "unknown", "203.0.113.9\r\nX: y", "1.2.3.4.5"])
def test_an_entry_that_is_not_an_address_falls_back_to_the_connection(forwarded: str) -> None:
    assert ip(forwarded) == LB
