"""The rate-limit script's cost with the quota counted per billing period (a hash
{p, n}: HMGET + HINCRBY) against the calendar-month counter before it (GET + INCR).

A private redis-server on a free loopback port (so other work on the machine does not
enter its command statistics); the two scripts alternate in rounds, and the figure is
Redis's own `usec_per_call` for EVALSHA of each (server CPU per request check).

    python bench/quota_lua_bench.py [--rounds 10] [--calls 2000]
"""

import argparse
import socket
import subprocess
import tempfile
import time
from typing import Any

import redis

from clinik.gateway.ratelimit import GCRA_LUA


def _old_script() -> str:
    """The script as it was before the billing period (the branch's base commit)."""
    out = subprocess.run(
        ["git", "show", "2649d6d:clinik/gateway/ratelimit.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split('GCRA_LUA = """', 1)[1].split('"""', 1)[0]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    opts = parser.parse_args()
    port = _port()
    with tempfile.TemporaryDirectory() as work:
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                work,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(50):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.1)
            run(client, opts.rounds, opts.calls)
        finally:
            server.terminate()
            server.wait(timeout=10)


def run(client: redis.Redis, rounds: int, calls: int) -> None:
    scripts = {"before (month counter)": _old_script(), "after (period hash)": GCRA_LUA}
    shas = {name: client.script_load(body) for name, body in scripts.items()}
    end_ms = int((time.time() + 86400 * 20) * 1000)
    limits = "clinik:limits:bench:org"
    client.hset(
        limits,
        mapping={
            "key_requests": 10**9,
            "org_requests": 10**9,
            "window": 60,
            "quota": -1,
            "period_end": end_ms // 1000,
        },
    )
    totals: dict[str, list[float]] = {name: [0.0, 0] for name in scripts}  # type: ignore[misc]
    for round_no in range(rounds):
        order = list(shas.items())
        for name, sha in order if round_no % 2 else order[::-1]:  # alternate who goes first
            client.config_resetstat()
            old = name.startswith("before")
            keys = ["rl:key:k", "rl:org:o", "rl:quota:o:202612" if old else "rl:quota:o", limits]
            window = 30 * 86400 * 1000 if old else end_ms
            args: list[Any] = [
                3,
                "g",
                10**9,
                60000,
                "key_requests",
                "g",
                10**9,
                60000,
                "org_requests",
                "q",
                -1,
                window,
                "quota",
            ]
            pipe = client.pipeline(transaction=False)
            for _ in range(calls):
                pipe.evalsha(sha, len(keys), *keys, *args)
            pipe.execute()
            stats = client.info("commandstats")["cmdstat_evalsha"]
            totals[name][0] += stats["usec"]
            totals[name][1] += stats["calls"]
    for name, (usec, n) in totals.items():
        print(f"{name}: {usec / n:.2f} µs of Redis CPU per check ({int(n)} calls)")


if __name__ == "__main__":
    main()
