"""The subject on the token rows (migration 0008): written, rewritten and removed with
the resource (create, update, delete, transaction bundle), backfilled for rows written
before it, and searches that read subject and token together
(`Compiler.subject_ids`) answer exactly what each criterion alone does."""

from collections.abc import Iterator
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

import pytest
from django.db import connection

from clinik.fhir.search.query import parse_search
from clinik.fhir.store.postgres import PostgresStore
from clinik.fhir.tenancy import tenant_transaction

pytestmark = pytest.mark.django_db

STORE = PostgresStore()
LOINC = "http://loinc.org"
BACKFILL = import_module("clinik.fhir.migrations.0008_token_subject").BACKFILL


def _observation(oid: str, subject: str | None, code: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
    }
    if subject is not None:
        resource["subject"] = {"reference": subject}
    return resource


@pytest.fixture
def org() -> Iterator[UUID]:
    tenant = uuid4()
    resources: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": "acme", "name": "Acme"},
        {"resourceType": "Organization", "id": "beta", "name": "Beta"},
        {
            "resourceType": "Patient",
            "id": "p1",
            "managingOrganization": {"reference": "Organization/acme"},
        },
        {
            "resourceType": "Patient",
            "id": "p2",
            "managingOrganization": {"reference": "Organization/beta"},
        },
        {"resourceType": "Group", "id": "g1", "type": "person", "actual": True},
        _observation("o1", "Patient/p1", "8480-6"),
        _observation("o2", "Patient/p1", "8462-4"),
        _observation("o3", "Patient/p2", "8480-6"),
        _observation("o4", "Group/g1", "8480-6"),
        _observation("o5", None, "8480-6"),
        _observation("o6", "Patient/p1", "8480-6"),
    ]
    for resource in resources:
        STORE.create(tenant, resource, resource_id=str(resource["id"]))
    yield tenant
    STORE.purge_tenant(tenant)


def _ids(org: UUID, resource_type: str, qs: str) -> set[str]:
    query = parse_search(parse_qsl(qs, keep_blank_values=True), [resource_type])
    result = STORE.search(org, query)
    assert result.total == len(result.matches)
    return {v.id for v in result.matches}


def _subjects(org: UUID, resource_id: str) -> set[tuple[str, str | None, str | None]]:
    with tenant_transaction(org), connection.cursor() as cursor:
        cursor.execute(
            "SELECT param, subject_type, subject_id FROM fhir_idx_token"
            " WHERE org_id = %s AND resource_type = 'Observation' AND id = %s",
            [org, resource_id],
        )
        return set(cursor.fetchall())


def test_token_rows_carry_the_subject_through_update_and_delete(org: UUID) -> None:
    assert _subjects(org, "o1") == {("code", "Patient", "p1"), ("status", "Patient", "p1")}
    assert _subjects(org, "o5") == {("code", None, None), ("status", None, None)}
    STORE.update(org, _observation("o1", "Patient/p2", "8480-6"), "o1")
    assert _subjects(org, "o1") == {("code", "Patient", "p2"), ("status", "Patient", "p2")}
    assert _ids(org, "Observation", "subject=Patient/p2&code=8480-6") == {"o1", "o3"}
    STORE.update(org, _observation("o1", None, "8480-6"), "o1")
    assert _subjects(org, "o1") == {("code", None, None), ("status", None, None)}
    STORE.delete(org, "Observation", "o6")
    assert _subjects(org, "o6") == set()
    assert _ids(org, "Observation", "subject=Patient/p1&code=8480-6") == set()


def test_a_transaction_bundle_writes_the_subject(org: UUID) -> None:
    STORE.create_many(org, [(_observation("b1", "Patient/p2", "8462-4"), "b1")])
    assert _subjects(org, "b1") == {("code", "Patient", "p2"), ("status", "Patient", "p2")}
    assert _ids(org, "Observation", "patient=p2&code=8462-4") == {"b1"}


def test_subject_and_token_read_together_match_each_alone(org: UUID) -> None:
    cases = {
        "subject=Patient/p1&code=8480-6": {"o1", "o6"},
        f"code={LOINC}|8480-6&subject=Patient/p1": {"o1", "o6"},
        "subject=p1&code=8480-6": {"o1", "o6"},
        "subject:Patient=p1&code=8480-6": {"o1", "o6"},
        "subject:Group=p1&code=8480-6": set(),
        "patient=p1&code=8480-6,8462-4": {"o1", "o2", "o6"},
        "patient=g1&code=8480-6": set(),  # patient: Patient subjects only
        "subject=Group/g1&code=8480-6": {"o4"},
        "subject=Patient/p1&code=http://other|8480-6": set(),
        "subject=Patient/p1&code=8480-6&status=final": {"o1", "o6"},
        "subject=Patient/p1&code=8480-6&_id=o6": {"o6"},
        # a chain through subject next to a token
        "subject:Patient.organization.name=acme&code=8480-6": {"o1", "o6"},
        "code=8480-6&subject:Patient.organization.name=acme": {"o1", "o6"},
        "patient.organization.name=beta&code=8480-6": {"o3"},
        "subject.organization.name=beta&code=8462-4": set(),
    }
    for qs, expected in cases.items():
        assert _ids(org, "Observation", qs) == expected, qs


def test_the_backfill_fills_rows_written_before_the_column(org: UUID) -> None:
    with tenant_transaction(org), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE fhir_idx_token SET subject_type = NULL, subject_id = NULL WHERE org_id = %s",
            [org],
        )
        # a second subject for o2 (no R4 type has two, but the index allows it)
        cursor.execute(
            "INSERT INTO fhir_idx_reference (org_id, resource_type, id, param, target_type,"
            " target_id) VALUES (%s, 'Observation', 'o2', 'subject', 'Patient', 'p2')",
            [org],
        )
        cursor.execute(BACKFILL, [org] * 3)
    assert _subjects(org, "o1") == {("code", "Patient", "p1"), ("status", "Patient", "p1")}
    assert _subjects(org, "o5") == {("code", None, None), ("status", None, None)}
    assert _subjects(org, "o2") == {
        ("code", "Patient", "p1"),
        ("status", "Patient", "p1"),
        ("code", "Patient", "p2"),
        ("status", "Patient", "p2"),
    }
    assert _ids(org, "Observation", "subject=Patient/p2&code=8462-4") == {"o2"}
    assert _ids(org, "Observation", "subject=Patient/p1&code=8480-6") == {"o1", "o6"}
    assert _ids(org, "Observation", "code=8462-4") == {"o2"}
