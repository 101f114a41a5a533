"""Synthea-style patient transaction bundles: one Patient and its encounters,
conditions and observations, all linked by urn:uuid references."""

import random
import uuid
from typing import Any

LOINC = [
    ("8867-4", "Heart rate", "/min"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    ("29463-7", "Body weight", "kg"),
    ("8302-2", "Body height", "cm"),
]
SNOMED = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195662009", "Acute viral pharyngitis"),
]


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def patient_bundle(entries: int = 300, seed: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    patient_url = _urn()
    mrn = str(rng.randrange(10**9))
    born = f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 9)}-2{rng.randrange(8)}"
    out = [
        _entry(
            {
                "resourceType": "Patient",
                "identifier": [{"system": "https://synthea.test/mrn", "value": mrn}],
                "name": [{"family": rng.choice(["Smith", "Jones", "Garcia"]), "given": ["Sam"]}],
                "gender": rng.choice(["male", "female"]),
                "birthDate": born,
            },
            patient_url,
        )
    ]
    encounter_url = None
    while len(out) < entries:
        kind = len(out) % 10
        if kind == 1 or encounter_url is None:
            encounter_url = _urn()
            resource: dict[str, Any] = {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": patient_url},
                "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T10:30:00Z"},
            }
            out.append(_entry(resource, encounter_url))
        elif kind == 2:
            code, text = rng.choice(SNOMED)
            out.append(
                _entry(
                    {
                        "resourceType": "Condition",
                        "code": {
                            "coding": [{"system": "http://snomed.info/sct", "code": code}],
                            "text": text,
                        },
                        "subject": {"reference": patient_url},
                        "encounter": {"reference": encounter_url},
                    },
                    _urn(),
                )
            )
        else:
            code, text, unit = rng.choice(LOINC)
            out.append(
                _entry(
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {
                            "coding": [{"system": "http://loinc.org", "code": code}],
                            "text": text,
                        },
                        "subject": {"reference": patient_url},
                        "encounter": {"reference": encounter_url},
                        "effectiveDateTime": "2024-01-01T10:15:00Z",
                        "valueQuantity": {
                            "value": round(rng.uniform(40, 180), 1),
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        },
                    },
                    _urn(),
                )
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


# --- the provider bundles -------------------------------------------------------------
# Synthea also writes `hospitalInformation*.json` and `practitionerInformation*.json`:
# batch bundles whose every entry is a conditional create (`ifNoneExist` on the
# identifier), loaded before the patient bundles, which then point at those resources
# with conditional references (`Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|…`).
# These build bundles of the same shape (2,382 entries each by default).

SYNTHEA_ID = "https://github.com/synthetichealth/synthea"
NPI = "http://hl7.org/fhir/sid/us-npi"


def _organization_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def _npi(n: int) -> str:
    return f"{9999900000 + n}"


def _conditional(resource: dict[str, Any], criteria: str) -> dict[str, Any]:
    return {
        "fullUrl": _urn(),
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": criteria,
        },
    }


def hospital_bundle(organizations: int = 1191, seed: int = 7) -> dict[str, Any]:
    """An Organization and its Location per hospital, each a conditional create."""
    entries = []
    for n, org_id in enumerate(_organization_ids(organizations, seed)):
        identifier = {"system": SYNTHEA_ID, "value": org_id}
        entries.append(
            _conditional(
                {
                    "resourceType": "Organization",
                    "id": org_id,
                    "identifier": [identifier],
                    "active": True,
                    "type": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                    "code": "prov",
                                    "display": "Healthcare Provider",
                                }
                            ]
                        }
                    ],
                    "name": f"HOSPITAL {n}",
                    "telecom": [{"system": "phone", "value": f"555-{n:04d}"}],
                    "address": [{"city": "BOSTON", "state": "MA", "country": "US"}],
                },
                f"identifier={SYNTHEA_ID}|{org_id}",
            )
        )
        location_id = org_id[::-1]
        entries.append(
            _conditional(
                {
                    "resourceType": "Location",
                    "id": location_id,
                    "identifier": [{"system": SYNTHEA_ID, "value": location_id}],
                    "status": "active",
                    "name": f"HOSPITAL {n}",
                    "managingOrganization": {
                        "reference": f"Organization?identifier={SYNTHEA_ID}|{org_id}",
                        "display": f"HOSPITAL {n}",
                    },
                    "position": {"longitude": -71.0 - n / 1e4, "latitude": 42.3},
                },
                f"identifier={SYNTHEA_ID}|{location_id}",
            )
        )
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def practitioner_bundle(practitioners: int = 1191, seed: int = 7) -> dict[str, Any]:
    """A Practitioner and its PractitionerRole (at the hospital of the same number)."""
    entries = []
    for n, org_id in enumerate(_organization_ids(practitioners, seed)):
        npi = _npi(n)
        entries.append(
            _conditional(
                {
                    "resourceType": "Practitioner",
                    "id": str(uuid.UUID(int=int(npi), version=4)),
                    "identifier": [{"system": NPI, "value": npi}],
                    "active": True,
                    "name": [{"family": f"Doe{n}", "given": ["Jo"], "prefix": ["Dr."]}],
                    "gender": "female" if n % 2 else "male",
                },
                f"identifier={NPI}|{npi}",
            )
        )
        entries.append(
            _conditional(
                {
                    "resourceType": "PractitionerRole",
                    "id": str(uuid.UUID(int=int(npi) + 1, version=4)),
                    "identifier": [{"system": NPI, "value": npi}],
                    "practitioner": {"reference": f"Practitioner?identifier={NPI}|{npi}"},
                    "organization": {"reference": f"Organization?identifier={SYNTHEA_ID}|{org_id}"},
                    "code": [{"text": "General Practice"}],
                },
                f"identifier={NPI}|{npi}",
            )
        )
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def provider_patient_bundle(entries: int = 60, seed: int = 7, hospital: int = 3) -> dict[str, Any]:
    """A patient transaction bundle whose encounters point at a hospital, its location
    and a practitioner of the provider bundles by conditional references."""
    bundle = patient_bundle(entries, seed=seed)
    org_id = _organization_ids(hospital + 1, seed)[hospital]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Encounter":
            resource["serviceProvider"] = {
                "reference": f"Organization?identifier={SYNTHEA_ID}|{org_id}"
            }
            resource["location"] = [
                {"location": {"reference": f"Location?identifier={SYNTHEA_ID}|{org_id[::-1]}"}}
            ]
            resource["participant"] = [
                {"individual": {"reference": f"Practitioner?identifier={NPI}|{_npi(hospital)}"}}
            ]
    return bundle
