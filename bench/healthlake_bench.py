"""The HealthLake store's adapter against the PostgreSQL store, in the same run:
reads/s, latency and the application CPU per request of each, alternating rounds.

    make db && .venv/bin/python bench/healthlake_bench.py [--requests 300] [--rounds 5]
        [--stores postgres,healthlake-before,healthlake-urllib3,healthlake]

The application runs in this process through the full WSGI stack (Django's test
client, every middleware, the gateway, audit). HealthLake is the local fake
datastore (tests/healthlake_fake.py) in a child process, so its work is not in this
process's CPU time: what is measured is what the adapter adds (SigV4 signing, the
HTTP call, the Redis quota, JSON parsing and the tenant check) against PostgreSQL's
path (SQL under row-level security). The fake answers from memory on loopback: the
wall figures are a floor, a real datastore adds its own network latency.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HIGH = str(10**9)
os.environ.update(
    {
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_IP_REQUESTS": HIGH,
        "RATE_LIMIT_KEY_REQUESTS": HIGH,
        "RATE_LIMIT_ORG_REQUESTS": HIGH,
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
    }
)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.test import Client  # noqa: E402

from bench.common import create_org  # noqa: E402
from clinik.fhir.store import _store  # noqa: E402

STORES = ("postgres", "healthlake-before", "healthlake-urllib3", "healthlake")
"""PostgreSQL; HealthLake with urllib3 and a signing key derived per request (the
adapter before the CPU work of issue 19); HealthLake with today's signer and urllib3
used lean; HealthLake as it is (libcurl through pycurl). `--stores` picks some of
them. (The hand-written clinik/lib/keepalive.py client, measured against these in
bench/README.md, was `healthlake-keepalive` until it was removed.)"""

_FAKE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.healthlake_fake import FakeHealthLake
fake = FakeHealthLake().start()
print(fake.datastore_id, fake.origin, flush=True)
time.sleep(3600)
"""


class Urllib3Pool:
    """The adapter's transport before this bench's last change (issue 19): urllib3's
    pool, for the same-run comparison ("healthlake-before")."""

    def __init__(self, base: str) -> None:
        import urllib3

        self.pool = urllib3.PoolManager(
            maxsize=10,
            block=False,
            timeout=urllib3.Timeout(connect=2.0, read=10.0),
            retries=False,
        ).connection_from_url(base)

    def request(self, method, target, headers, body=None, *, reuse=True):
        from clinik.fhir.store.healthlake_client import Answer

        r = self.pool.urlopen(
            method,
            target,
            body=body,
            headers=headers,
            preload_content=True,
            redirect=False,
            assert_same_host=False,
        )
        return Answer(r.status, r.data, {k.lower(): v for k, v in r.headers.items()})


class LeanUrllib3:
    """urllib3 used lean: one connection pool for the origin, no retries, no
    redirects, no decoding, the body read at once ("healthlake-urllib3")."""

    def __init__(self, origin: str) -> None:
        import urllib3

        self.pool = urllib3.connection_from_url(
            origin,
            maxsize=10,
            block=False,
            timeout=urllib3.Timeout(connect=2.0, read=10.0),
            retries=False,
        )

    def request(self, method, target, headers, body=None, *, reuse=True):
        from clinik.fhir.store.healthlake_client import Answer

        r = self.pool.urlopen(
            method,
            target,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
            assert_same_host=False,
            preload_content=True,
            decode_content=False,
        )
        return Answer(r.status, r.data, {k.lower(): v for k, v in r.headers.items()})


def use(store: str, datastore_id: str, origin: str) -> None:
    settings.FHIR_STORE = store.split("-")[0]
    settings.HEALTHLAKE_DATASTORE_ID = datastore_id
    settings.HEALTHLAKE_REGION = "us-east-1"
    settings.HEALTHLAKE_ENDPOINT_URL = origin
    _store.cache_clear()
    if store == "healthlake-urllib3":
        from clinik.fhir.store import get_store

        client = get_store().client  # type: ignore[attr-defined]
        client._pool = LeanUrllib3(client.origin)
    if store == "healthlake-before":
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        from clinik.fhir.store import get_store

        client = get_store().client  # type: ignore[attr-defined]
        client._pool = Urllib3Pool(client.base)
        frozen = client._session.get_credentials().get_frozen_credentials()
        signer = SigV4Auth(frozen, "healthlake", client.region)

        def signed(method, url, body, headers):  # AWSRequest, the key derived each time
            request = AWSRequest(method=method, url=url, data=body or b"", headers=headers)
            signer.add_auth(request)
            return dict(request.headers.items())

        client._signed = signed


def measure(send, requests: int) -> dict[str, float]:
    gc.collect()  # the garbage of earlier rounds (store set-up) is not this round's
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(requests):
        send()
    return {
        "cpu_us": (time.process_time() - c0) / requests * 1e6,
        "wall_us": (time.perf_counter() - w0) / requests * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default=",".join(STORES))
    args = parser.parse_args()
    stores = tuple(args.stores.split(","))
    assert stores[0] == "postgres", "PostgreSQL first: the others are measured against it"
    from tests.healthlake_fake import ACCESS_KEY, SECRET_KEY

    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    fake = subprocess.Popen(
        [sys.executable, "-c", _FAKE, str(ROOT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert fake.stdout is not None
        datastore_id, origin = fake.stdout.readline().split()
        org = create_org("HealthLake bench", "hlbench@example.com")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {org['api_key']}")
        body = (ROOT / "bench" / "wrk" / "patient.json").read_bytes()
        ids = {}
        for store in stores:
            use(store, datastore_id, origin)
            created = client.post("/fhir/R4/Patient", body, content_type="application/fhir+json")
            assert created.status_code == 201, created.content
            ids[store] = created.json()["id"]

        def reader(store: str):
            path = f"/fhir/R4/Patient/{ids[store]}"

            def read() -> None:
                assert client.get(path).status_code == 200

            return read

        def writer() -> None:
            response = client.post("/fhir/R4/Patient", body, content_type="application/fhir+json")
            assert response.status_code == 201

        def calls(store: str):
            """The store's client alone: a signed, quota-counted read (`call`), and the
            transport alone with headers signed once (`transport`)."""
            from clinik.fhir.store import get_store

            hl = get_store().client  # type: ignore[attr-defined]
            url = hl.url(f"Patient/{ids[store]}")
            target = url[len(hl.origin) :]
            signed = hl._signed("GET", url, None, {"Accept": "application/fhir+json"})

            def call() -> None:
                assert hl.call("GET", f"Patient/{ids[store]}").status == 200

            def transport() -> None:
                assert hl._pool.request("GET", target, signed, None, reuse=True).status == 200

            return (("call", call), ("transport", transport))

        results: dict[str, dict[str, list[float]]] = {}
        for _round in range(args.rounds):
            turn = _round % (len(stores) - 1)  # PostgreSQL first, the others rotating
            for store in (stores[0], *stores[1 + turn :], *stores[1 : 1 + turn]):
                use(store, datastore_id, origin)
                reader(store)()  # warm
                work = [("GET Patient/{id}", reader(store)), ("POST Patient", writer)]
                if store != "postgres":
                    work += calls(store)
                for name, send in work:
                    figures = measure(send, args.requests)
                    slot = results.setdefault(f"{name} {store}", {"cpu_us": [], "wall_us": []})
                    slot["cpu_us"].append(figures["cpu_us"])
                    slot["wall_us"].append(figures["wall_us"])
        summary = {
            name: {
                "cpu_us_median": round(statistics.median(r["cpu_us"])),
                "wall_us_median": round(statistics.median(r["wall_us"])),
                "per_s": round(1e6 / statistics.median(r["wall_us"])),
            }
            for name, r in results.items()
        }
        print(f"{'request':<38} {'CPU µs':>8} {'wall µs':>8} {'req/s':>7}")
        for name, r in summary.items():
            print(f"{name:<38} {r['cpu_us_median']:>8} {r['wall_us_median']:>8} {r['per_s']:>7}")
        for name in ("GET Patient/{id}", "POST Patient"):
            for store in stores[1:]:
                extra = (
                    summary[f"{name} {store}"]["cpu_us_median"]
                    - summary[f"{name} postgres"]["cpu_us_median"]
                )
                print(f"{name}: {store} adds {extra} µs of application CPU per request")
        print(json.dumps({"args": vars(args), "results": summary}))
    finally:
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()
