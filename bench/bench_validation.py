"""How long validate_resource takes on typical and large R4 resources.

Run: .venv/bin/pytest bench/bench_validation.py --benchmark-enable -p no:cacheprovider
"""

import json
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from clinik.fhir.spec import package_path
from clinik.fhir.validation import validate_resource

EXAMPLES = {
    # A typical patient: names, identifiers, contact, narrative, a primitive extension.
    "patient": "Patient-example.json",
    # The largest Observation example: components, reference ranges, narrative.
    "observation-apgar": "Observation-10minute-apgar-score.json",
    # A lab report bundle: a DiagnosticReport and 16 Observations.
    "bundle-lab-report": "Bundle-lri-example.json",
    # A 76 kB bundle of 59 Practitioners.
    "bundle-practitioners": "Bundle-3ad0687e-f477-468c-afd5-fcc2bf897809.json",
}


def load(name: str) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((package_path() / name).read_text(encoding="utf-8"))
    return resource


@pytest.mark.parametrize("example", EXAMPLES)
def test_validate(benchmark: BenchmarkFixture, example: str) -> None:
    resource = load(EXAMPLES[example])
    benchmark.extra_info["resources"] = 1 + len(resource.get("entry", []))
    issues = benchmark(validate_resource, resource, resource_type=resource["resourceType"])
    assert issues == []


def test_parse_and_validate_patient(benchmark: BenchmarkFixture) -> None:
    """What a create costs in the view: the body's JSON parse plus validation."""
    body = (package_path() / EXAMPLES["patient"]).read_bytes()

    def parse_and_validate() -> int:
        return len(validate_resource(json.loads(body), resource_type="Patient"))

    assert benchmark(parse_and_validate) == 0
