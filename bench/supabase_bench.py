"""Supabase Auth: what verifying an access token costs, and a dashboard page view with
a session started by Django's sign-in (A) or by Supabase Auth (B).

    .venv/bin/python bench/supabase_bench.py [--verifications 3000] [--views 300]

1. `JwksVerifier.verify` with a warm JWKS cache, for RS256, ES256 (Supabase's
   asymmetric keys) and the legacy HS256 secret: median wall time and CPU per token.
2. GET /o/<org>/ through Django's test client (full middleware stack), A and B
   alternating in one run, against the local GoTrue server of the tests. B's pages
   must not call Supabase: the server counts the calls it gets during the views.

Uses its own database (clinik_supa17, created and migrated here). Loopback only.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = "clinik_supa17"
os.environ.setdefault("DATABASE_URL", f"postgres://clinik@127.0.0.1:5432/{DB}")
os.environ.setdefault("DATABASE_OWNER_URL", f"postgres://clinik_owner@127.0.0.1:5432/{DB}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/6")
sys.path.insert(0, str(ROOT))


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def bench_verify(count: int) -> None:
    import jwt

    from clinik.lib.jwtverify import JwksVerifier
    from tests.supabase_fake import FakeGoTrue

    fake = FakeGoTrue()
    try:
        secret = "legacy-hs256-secret-for-the-benchmark-0123456789"
        verifier = JwksVerifier(
            f"{fake.issuer}/.well-known/jwks.json",
            fake.issuer,
            "authenticated",
            hs256_secret=secret,
        )
        user = fake.add_user("bench@supa.test", "pw")
        claims = fake.claims_for(user, "password")
        tokens = {"RS256": fake.sign(claims)}
        fake.rotate("ES256", keep_old=True)
        tokens["ES256"] = fake.sign(claims)
        tokens["HS256"] = jwt.encode(claims, secret, algorithm="HS256")
        for token in tokens.values():
            verifier.verify(token)  # warm: the JWKS is fetched once here
        fetches = fake.calls.count("GET /.well-known/jwks.json")
        print(f"{'alg':6} {'median µs':>10} {'p95 µs':>8} {'CPU µs/token':>13}")
        for alg, token in tokens.items():
            samples = []
            cpu0 = time.process_time()
            for _ in range(count):
                start = time.perf_counter()
                verifier.verify(token)
                samples.append(time.perf_counter() - start)
            cpu = (time.process_time() - cpu0) / count * 1e6
            p95 = sorted(samples)[int(len(samples) * 0.95)] * 1e6
            print(f"{alg:6} {_median_us(samples):10.1f} {p95:8.1f} {cpu:13.1f}")
        extra = fake.calls.count("GET /.well-known/jwks.json") - fetches
        print(f"JWKS fetches during the timed verifications: {extra}")
    finally:
        fake.close()


def _migrate() -> None:
    env = {**os.environ}
    subprocess.run(
        [sys.executable, "-m", "clinik.lib.services", "bootstrap"], cwd=ROOT, env=env, check=True
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env={**env, "CLINIK_DB_AS_OWNER": "1"},
        check=True,
    )


def bench_views(count: int) -> None:
    _migrate()
    import django

    django.setup()
    from django.test import Client
    from django.test.utils import override_settings

    from clinik.accounts import supabase
    from clinik.accounts.actions import do_signup
    from tests.supabase_fake import ANON_KEY, SERVICE_KEY, FakeGoTrue

    fake = FakeGoTrue()
    password = "a sturdy bench passphrase 9"
    try:
        run = int(time.time())
        email_a, email_b = f"a{run}@supa.bench", f"b{run}@supa.bench"
        _a, org_a = do_signup(
            email=email_a, name="A", password=password, org_name="A", request=None
        )
        user_b, org_b = do_signup(
            email=email_b, name="B", password=None, org_name="B", request=None
        )
        remote = fake.add_user(email_b, password)
        user_b.external_auth_id = remote.id
        user_b.save(update_fields=["external_auth_id"])
        with_supabase = override_settings(
            SUPABASE_URL=fake.url,
            SUPABASE_ANON_KEY=ANON_KEY,
            SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
            SUPABASE_JWKS_URL=f"{fake.issuer}/.well-known/jwks.json",
            SUPABASE_JWT_ISSUER=fake.issuer,
        )
        client_a, client_b = Client(), Client()
        assert (
            client_a.post("/accounts/signin/", {"email": email_a, "password": password}).status_code
            == 302
        )
        with with_supabase:
            supabase._verifier.cache_clear()
            start = time.perf_counter()
            signed = client_b.post("/accounts/signin/", {"email": email_b, "password": password})
            signin_ms = (time.perf_counter() - start) * 1e3
            assert signed.status_code == 302 and "supabase_tokens" in client_b.session
        calls = len(fake.calls)
        a_wall, b_wall, a_cpu, b_cpu = [], [], 0.0, 0.0
        for _ in range(20):  # warm-up
            client_a.get(f"/o/{org_a.pk}/")
            with with_supabase:
                client_b.get(f"/o/{org_b.pk}/")
        calls = len(fake.calls)
        for _ in range(count):
            cpu0, start = time.process_time(), time.perf_counter()
            assert client_a.get(f"/o/{org_a.pk}/").status_code == 200
            a_wall.append(time.perf_counter() - start)
            a_cpu += time.process_time() - cpu0
            with with_supabase:
                cpu0, start = time.process_time(), time.perf_counter()
                assert client_b.get(f"/o/{org_b.pk}/").status_code == 200
                b_wall.append(time.perf_counter() - start)
                b_cpu += time.process_time() - cpu0
        print(f"Supabase password sign-in (GoTrue round trip + verification): {signin_ms:.1f} ms")
        print(f"{'session':22} {'median ms':>10} {'CPU ms/view':>12}")
        for name, wall, cpu in (("A Django sign-in", a_wall, a_cpu), ("B Supabase", b_wall, b_cpu)):
            print(f"{name:22} {_median_us(wall) / 1e3:10.2f} {cpu / count * 1e3:12.2f}")
        print(f"B/A median: {statistics.median(b_wall) / statistics.median(a_wall):.2f}")
        print(f"Supabase calls during {count * 2} page views: {len(fake.calls) - calls}")
    finally:
        fake.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--verifications", type=int, default=3000)
    parser.add_argument("--views", type=int, default=300)
    args = parser.parse_args()
    bench_verify(args.verifications)
    bench_views(args.views)


if __name__ == "__main__":
    main()
