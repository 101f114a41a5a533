"""Round trip of the official HL7 R4 examples through the REST API: create, read back
equal apart from id/meta, update, vread, history, delete."""

import json
from typing import Any

import pytest

from clinik.fhir.spec import example_resources

pytestmark = pytest.mark.django_db


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def _round_trip(api, resource: dict[str, Any]) -> str | None:
    """None when every step behaves, else the first step that did not."""
    rtype = resource["resourceType"]
    created = api.post(rtype, resource)
    if created.status_code != 201:
        issue = created.json().get("issue", [{}])[0]
        return f"create {created.status_code}: {issue.get('expression')} {issue.get('diagnostics')}"
    rid = created.json()["id"]
    read = api.get(f"{rtype}/{rid}")
    if read.status_code != 200 or _strip(read.json()) != _strip(resource):
        return f"read back differs ({read.status_code})"
    updated = api.put(f"{rtype}/{rid}", {**resource, "id": rid})
    if updated.status_code != 200 or updated.json()["meta"]["versionId"] != "2":
        return f"update {updated.status_code}"
    if api.get(f"{rtype}/{rid}/_history/1").status_code != 200:
        return "vread"
    history = api.get(f"{rtype}/{rid}/_history").json()
    if len(history.get("entry", [])) != 2:
        return "history"
    if api.delete(f"{rtype}/{rid}").status_code != 204:
        return "delete"
    if api.get(f"{rtype}/{rid}").status_code != 410:
        return "read after delete"
    return None


def test_hl7_examples_round_trip(api) -> None:
    failures: dict[str, str] = {}
    total = 0
    for path, resource in example_resources(include_conformance=False):
        total += 1
        problem = _round_trip(api, resource)
        if problem:
            failures[path.name] = problem
    passed = total - len(failures)
    print(f"\nHL7 R4 examples round trip: {passed}/{total} passed")
    for name, problem in sorted(failures.items()):
        print(f"  FAIL {name}: {problem}")
    assert total >= 700  # every non-conformance example of the package
    assert passed / total >= 0.95, json.dumps(failures, indent=1)[:5000]
