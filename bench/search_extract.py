"""What indexing costs: microseconds of `extract()` per resource, by resource type,
over the HL7 R4 examples (each example extracted --rounds times, best round kept).

    .venv/bin/python bench/search_extract.py [--rounds 5] [--top 25]

Also prints the registry's start-up cost and how many parameters fall back to
fhirpathpy.
"""

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")

import django  # noqa: E402

django.setup()

import clinik.fhir.spec  # noqa: E402, F401  (load the element table before timing the registry)

began = time.perf_counter()
from clinik.fhir.search import registry  # noqa: E402

REGISTRY_MS = (time.perf_counter() - began) * 1000

from clinik.fhir.search.extract import extract  # noqa: E402
from clinik.fhir.spec import example_resources  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    examples = [r for _path, r in example_resources(include_conformance=False)]
    timings: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, list[int]] = defaultdict(list)
    for resource in examples:
        best = min(
            _time(lambda resource=resource: extract(resource))  # type: ignore[misc]
            for _ in range(args.rounds)
        )
        timings[resource["resourceType"]].append(best)
        rows[resource["resourceType"]].append(len(extract(resource)))
    every = [t for ts in timings.values() for t in ts]
    params = [p for ps in registry.PARAMS.values() for p in ps.values()]
    print(f"registry: {len(params)} (type, parameter) pairs compiled in {REGISTRY_MS:.0f} ms;")
    print(
        f"  searchable {sum(p.searchable for p in params)},"
        f" by fhirpathpy {sum(p.fallback for p in params)},"
        f" unsupported {sum(not p.searchable for p in params)}"
    )
    print(
        f"{len(examples)} examples: median {statistics.median(every):.0f} µs,"
        f" mean {statistics.mean(every):.0f} µs, max {max(every):.0f} µs per resource\n"
    )
    print("| type | examples | median µs | max µs | index rows (median) |")
    print("|---|---:|---:|---:|---:|")
    ranked = sorted(timings.items(), key=lambda kv: -statistics.median(kv[1]))
    for resource_type, ts in ranked[: args.top]:
        print(
            f"| {resource_type} | {len(ts)} | {statistics.median(ts):.0f} | {max(ts):.0f}"
            f" | {statistics.median(rows[resource_type]):.0f} |"
        )


def _time(function: object) -> float:
    began = time.perf_counter()
    function()  # type: ignore[operator]
    return (time.perf_counter() - began) * 1e6


if __name__ == "__main__":
    main()
