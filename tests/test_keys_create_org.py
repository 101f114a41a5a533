"""`create_org` prints one JSON line whose api_key works (docs/architecture.md, "Contracts")."""

import io
import json

import pytest
from django.core.management import call_command
from django.test import Client

from clinik.keys import tokens
from clinik.keys.models import ApiKey

pytestmark = pytest.mark.django_db


def test_create_org_prints_a_working_live_key(client: Client) -> None:
    out = io.StringIO()
    call_command("create_org", "--name", "Demo Clinic", "--email", "Demo@Clinic.test", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == {"org_id", "user_email", "api_key"}
    assert result["user_email"] == "demo@clinic.test"
    plaintext = result["api_key"]
    assert plaintext.startswith("ck_live_") and tokens.is_well_formed(plaintext)
    key = ApiKey.objects.get()
    assert str(key.org_id) == result["org_id"] and key.can_write
    auth = {"Authorization": f"Bearer {plaintext}"}
    created = client.post(
        "/fhir/R4/Patient", {"resourceType": "Patient"}, "application/fhir+json", headers=auth
    )
    assert created.status_code == 201, created.content
    read = client.get(f"/fhir/R4/Patient/{created.json()['id']}", headers=auth)
    assert read.status_code == 200
    assert read.json()["id"] == created.json()["id"]
