"""A real FHIR client library (fhirpy) against a live server."""

import asyncio

import pytest
from fhirpy import AsyncFHIRClient, SyncFHIRClient


@pytest.mark.django_db(transaction=True)
def test_fhirpy_crud_against_a_live_server(live_server, owner) -> None:
    from tests.conftest import _api_for

    key = _api_for(owner).key
    client = SyncFHIRClient(
        f"{live_server.url}/fhir/R4",
        authorization=f"Bearer {key}",
        extra_headers={"Content-Type": "application/fhir+json"},
    )
    patient = client.resource(
        "Patient", name=[{"family": "Lovelace", "given": ["Ada"]}], gender="female"
    )
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"
    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Lovelace"
    fetched["gender"] = "other"
    fetched.save()
    again = client.reference("Patient", patient.id).to_resource()
    assert again["meta"]["versionId"] == "2"
    assert again["gender"] == "other"
    again.delete()
    with pytest.raises(Exception, match=r"410|deleted|Gone"):
        client.reference("Patient", patient.id).to_resource()


@pytest.mark.django_db(transaction=True)
def test_fhirpy_async_client_reads_metadata(live_server) -> None:
    async def fetch() -> dict:
        client = AsyncFHIRClient(f"{live_server.url}/fhir/R4")
        return await client.execute("metadata", method="get")

    statement = asyncio.run(fetch())
    assert statement["resourceType"] == "CapabilityStatement"
