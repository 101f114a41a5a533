import pytest

pytestmark = pytest.mark.django_db


def test_crud_roundtrip(api, healthlake) -> None:
    created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Smith"}]})
    assert created.status_code == 201, created.content
    pid = created.json()["id"]
    assert api.get(f"Patient/{pid}").status_code == 200
    found = api.get("Patient?family=smi")
    assert found.status_code == 200, found.content
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [pid]
