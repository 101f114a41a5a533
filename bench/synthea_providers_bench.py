"""Synthea's provider batch bundles against a running server.

    make db && .venv/bin/python bench/synthea_providers_bench.py [--port N]

Creates an organization and key, starts gunicorn (as `make run` does, rate limits
raised), then POSTs, one after another from one client: the hospital bundle and the
practitioner bundle (2,382 conditional creates each, tests/synthea.py), the hospital
bundle again (every entry matches: nothing is written), and a 300-entry patient
transaction whose encounters point at them by conditional references. Prints the
wall time of each POST."""

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bundle_bench import ENV  # noqa: E402
from bench.common import create_org  # noqa: E402
from tests.synthea import (  # noqa: E402
    hospital_bundle,
    practitioner_bundle,
    provider_patient_bundle,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args()
    if not args.port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    key = create_org("Synthea providers", f"s{int(time.time())}@example.com", env=ENV)["api_key"]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "clinik.wsgi",
            "--config",
            "bench/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{args.port}",
            "--access-logfile",
            "/dev/null",
            "--timeout",
            "300",
        ],
        cwd=ROOT,
        env={**ENV, "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{args.port}"
    result: dict[str, float] = {}
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/fhir/R4/metadata", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        steps = [
            ("hospital_2382_s", hospital_bundle()),
            ("practitioner_2382_s", practitioner_bundle()),
            ("hospital_again_s", hospital_bundle()),
            ("patient_300_s", provider_patient_bundle(300)),
        ]
        for name, bundle in steps:
            body = json.dumps(bundle).encode()
            request = urllib.request.Request(
                f"{base}/fhir/R4/",
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=300) as response:
                assert response.status == 200
                response.read()
            result[name] = round(time.perf_counter() - started, 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
