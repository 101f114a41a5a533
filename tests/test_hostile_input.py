"""Hostile input never reaches PostgreSQL as a 500 (issue 13): NUL bytes, invalid UTF-8
percent-encodings, 10 KB values, numbers out of range and impossible dates, in every
search parameter type and modifier, ids, _sort, _elements, chains, _has, bundle
entries, conditional headers, stored headers and dashboard form fields. Every answer is
below 500, and every error is an OperationOutcome; NUL and invalid UTF-8 are a 400
that names the parameter."""

import json
from typing import Any
from urllib.parse import quote

import pytest

from clinik.fhir.search import registry
from clinik.fhir.spec import RESOURCE_TYPES
from tests.conftest import Api, Persona

pytestmark = pytest.mark.django_db

# Raw percent-encoded values, as they travel in a query string.
NUL = ["%00", "a%00b"]
NOT_UTF8 = ["%C3%28", "%FF", "a%E2%82"]
HOSTILE = [
    *NUL,
    *NOT_UTF8,
    "x" * 10_240,
    "1e999999",
    "-99999999999999999999999999999999",
    "gt1e400",
    "2026-02-30",
    "9999-99-99",
    "0000-01-01",
    "ap-0.00000000000000000000000000000000000000001",
    "%7C%7C%7C",
    "Patient%2F",
    "%24%24",
]
BROKEN = NUL + NOT_UTF8


def _params_by_type_and_modifier() -> list[tuple[str, str]]:
    """One (resource type, parameter name) for every parameter type and modifier, and
    every type without a modifier."""
    seen: dict[tuple[str, str | None], tuple[str, str]] = {}
    for resource_type in sorted(RESOURCE_TYPES):
        for param in registry.searchable(resource_type):
            for modifier in [None, *sorted(param.modifiers)]:
                name = param.code if modifier is None else f"{param.code}:{modifier}"
                seen.setdefault((param.type, modifier), (resource_type, name))
    return sorted(seen.values())


PARAMS = _params_by_type_and_modifier()

SPECIAL = [
    ("Patient", "_id"),
    ("Patient", "_sort"),
    ("Patient", "_elements"),
    ("Patient", "_count"),
    ("Patient", "_offset"),
    ("Patient", "_summary"),
    ("Patient", "_total"),
    ("Patient", "_include"),
    ("Patient", "_revinclude"),
    ("Patient", "_lastUpdated"),
    ("Patient", "_tag"),
    ("Patient", "_profile"),
    ("Patient", "_security"),
    ("Patient", "general-practitioner.name"),
    ("Patient", "general-practitioner:Practitioner.family"),
    ("Patient", "_has:Observation:patient:code"),
    ("Patient", "_has:Observation:patient:value-string"),
    ("Observation", "patient._id"),
    ("Observation", "code"),
    ("Observation", "value-string"),
    ("Observation", "combo-code-value-quantity"),
    ("Patient", "_cursor"),
    ("Patient", "_format"),
]


def _check(response: Any, what: str) -> dict[str, Any] | None:
    assert response.status_code < 500, (what, response.status_code, response.content[:300])
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert body["resourceType"] == "OperationOutcome", what
        return body  # type: ignore[no-any-return,unused-ignore]
    return None


def _names_parameter(body: dict[str, Any] | None, name: str) -> bool:
    assert body is not None
    text = json.dumps(body)
    return name.split(":")[0].split(".")[0] in text


@pytest.mark.parametrize(("resource_type", "name"), PARAMS + SPECIAL)
def test_every_search_parameter_type_and_modifier_refuses_hostile_values(
    api: Api, resource_type: str, name: str
) -> None:
    for raw in HOSTILE:
        what = f"{resource_type}?{name}={raw[:40]}"
        response = api.get(f"{resource_type}?{quote(name, safe=':.')}={raw}")
        body = _check(response, what)
        if raw in BROKEN:
            assert response.status_code == 400, what
            assert _names_parameter(body, name), (what, body)


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_values_in_names_form_bodies_history_and_system_search(api: Api, raw: str) -> None:
    requests = [
        ("GET", f"Patient?{raw}=x", None),
        ("GET", f"?_type=Patient&family={raw}", None),
        ("GET", f"?_type={raw}", None),
        ("GET", f"Patient/_history?_since={raw}", None),
        ("GET", f"Patient/_history?_at={raw}", None),
        ("GET", f"_history?_count={raw}", None),
        ("GET", f"metadata?_format={raw}", None),
        ("GET", f"Patient/$export?_type={raw}", None),
        ("GET", f"$export?_since={raw}", None),
    ]
    for method, path, _ in requests:
        _check(api.client.generic(method, f"/fhir/R4/{path}", **_auth(api)), path[:60])
    for name in ("family", "_sort", "_id"):
        body = f"{name}={raw}".encode("latin-1")
        response = api.client.generic(
            "POST",
            "/fhir/R4/Patient/_search",
            data=body,
            content_type="application/x-www-form-urlencoded",
            CONTENT_LENGTH=str(len(body)),
            **_auth(api),
        )
        answer = _check(response, f"POST _search {name}={raw[:40]}")
        if raw in BROKEN:
            assert response.status_code == 400 and _names_parameter(answer, name)


def _auth(api: Api) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {api.key}"}


@pytest.mark.parametrize("raw", ["%00", "a%00b", "%C3%28", "x" * 10_240, "..", "%2F"])
def test_hostile_ids_in_paths(api: Api, raw: str) -> None:
    for path in (
        f"Patient/{raw}",
        f"Patient/{raw}/_history",
        f"Patient/{raw}/_history/1",
        f"Patient/x/_history/{raw}",
    ):
        for method in ("GET", "DELETE"):
            _check(api.client.generic(method, f"/fhir/R4/{path}", **_auth(api)), path[:60])
    payload = json.dumps({"resourceType": "Patient", "id": raw}).encode()
    response = api.client.generic(
        "PUT",
        f"/fhir/R4/Patient/{raw}",
        data=payload,
        content_type="application/fhir+json",
        CONTENT_LENGTH=str(len(payload)),
        **_auth(api),
    )
    _check(response, f"PUT Patient/{raw[:40]}")


def _decoded(raw: str) -> str:
    from urllib.parse import unquote

    return (
        unquote(raw, errors="surrogateescape")
        .encode("utf-8", "surrogateescape")
        .decode("utf-8", "replace")
    )


@pytest.mark.parametrize("bundle_type", ["batch", "transaction"])
def test_hostile_bundle_entries(api: Api, bundle_type: str) -> None:
    for raw in HOSTILE:
        text = _decoded(raw)
        entries = [
            {"request": {"method": "GET", "url": f"Patient?family={raw}"}},
            {"request": {"method": "GET", "url": f"Patient?_sort={raw}"}},
            {"request": {"method": "GET", "url": f"Observation?code={raw}"}},
            {"request": {"method": "GET", "url": f"Patient?general-practitioner.name={raw}"}},
            {"request": {"method": "GET", "url": f"Patient/{raw}"}},
            {
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"family={raw}"},
                "resource": {"resourceType": "Patient", "name": [{"family": "Safe"}]},
            },
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": text}]},
            },
            {
                "request": {"method": "PUT", "url": f"Patient?identifier={raw}"},
                "resource": {"resourceType": "Patient"},
            },
            {"request": {"method": "DELETE", "url": f"Patient?family={raw}"}},
        ]
        for entry in entries:
            bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": [entry]}
            response = api.post("", bundle)
            _check(response, f"{bundle_type} {json.dumps(entry)[:80]}")
            if response.status_code == 200:
                for answer in response.json().get("entry", []):
                    status = int(answer["response"]["status"].split()[0])
                    assert status < 500, (bundle_type, entry, answer)


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_resource_bodies_and_conditional_headers(api: Api, raw: str) -> None:
    text = _decoded(raw)
    bodies: list[dict[str, Any]] = [
        {"resourceType": "Patient", "name": [{"family": text}]},
        {"resourceType": "Patient", "birthDate": text},
        {"resourceType": "Patient", "identifier": [{"system": text, "value": text}]},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": text},
            "valueQuantity": {"value": 1e308, "unit": text},
        },
        {"resourceType": "Patient", "meta": {"tag": [{"system": text, "code": text}]}},
    ]
    for body in bodies:
        resource_type = body["resourceType"]
        created = api.post(resource_type, body)
        _check(created, f"POST {resource_type} {raw[:40]}")
        if raw in NUL:  # (U+FFFD in a JSON body is a character like any other)
            assert created.status_code == 400, (raw, body)
        _check(
            api.post(resource_type, body, headers={"If-None-Exist": f"family={raw}"}),
            f"If-None-Exist {raw[:40]}",
        )
        _check(api.put(f"{resource_type}?family={raw}", body), f"conditional PUT {raw[:40]}")
    _check(api.delete(f"Patient?family={raw}"), f"conditional DELETE {raw[:40]}")


@pytest.mark.parametrize(
    "header",
    [
        "User-Agent",
        "X-Request-ID",
        "Prefer",
        "Accept",
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "X-Forwarded-For",
        "Origin",
    ],
)
def test_hostile_headers(api: Api, header: str) -> None:
    created = api.post("Patient", {"resourceType": "Patient"})
    assert created.status_code == 201
    path = f"Patient/{created.json()['id']}"
    for value in (
        "a\x00b",
        "\x00",
        "é\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
        "x" * 10_240,
    ):
        for method, target in (("GET", path), ("GET", "Patient?family=x"), ("DELETE", path)):
            meta: dict[str, Any] = {**_auth(api), "HTTP_" + header.upper().replace("-", "_"): value}
            response = api.client.generic(method, f"/fhir/R4/{target}", **meta)
            body = _check(response, f"{header}: {value[:20]!r} {method} {target}")
            if "\x00" in value and header == "User-Agent":
                assert response.status_code == 400 and _names_parameter(body, header)


def test_dashboard_forms_answer_nul_with_a_form_error(owner: Persona) -> None:
    client = owner.client()
    response = client.post(
        f"/o/{owner.org.pk}/keys/new/",
        {"name": "a\x00b", "scopes": "read", "expires": "never"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code < 500
    assert "Null characters are not allowed" in response.content.decode()
    response = client.post(f"/o/{owner.org.pk}/settings/", {"name": "Acme\x00"})
    assert response.status_code < 500
    assert "Null characters are not allowed" in response.content.decode()
