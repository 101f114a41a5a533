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
