"""Instructions per API request in the application process, counted by callgrind:
the one figure about our Python that other work on a shared machine does not move.

    make db && valgrind --tool=callgrind --separate-threads=yes --collect-atstart=no \\
        --toggle-collect=functools_reduce --dump-after=functools_reduce \\
        --callgrind-out-file=/tmp/req.cg .venv/bin/python bench/request_instructions.py \\
        [--requests 20] post get search
    grep -h "^summary:" /tmp/req.cg.*-01  # the main thread: a dump per workload, in
                                          # order (and a tiny one from start-up: ignore it)

Count the main thread only (--separate-threads=yes): without it, one run of the same
code on the loaded machine counted 8.5 M instructions per POST instead of 3.7 M
(bench/README.md, "Python per request, second pass"); the main thread's count
repeats within 0.2 %.

Drives the full WSGI application (every middleware, the gateway, views, the real
PostgreSQL and Redis) directly, one request after another, for a key the process
knows. Only the measured loop of each workload runs inside `functools.reduce`, so
callgrind counts exactly those requests (divide a dump's total by --requests);
setup, warm-up and Django's start are not counted. PostgreSQL's and Redis's own work
and the kernel's are not in the count: bench/fhir_bench.py measures those."""

import argparse
import functools
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HIGH = str(10**9)
os.environ.update(
    {
        "DEBUG": "true",  # the environment's; bench/nodebug_settings.py turns it off
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_IP_REQUESTS": HIGH,
        "RATE_LIMIT_KEY_REQUESTS": HIGH,
        "RATE_LIMIT_ORG_REQUESTS": HIGH,
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
    }
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("workloads", nargs="+", choices=("post", "get", "search"))
    args = parser.parse_args()
    from bench.common import create_org

    org = create_org("Instructions", "instructions@example.com")

    import django

    django.setup()
    from clinik.wsgi import application

    statuses: list[str] = []

    def call(method: str, path: str, query: str = "", data: bytes = b"") -> bytes:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "localhost:8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": sys.stderr,
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {org['api_key']}",
            "HTTP_ACCEPT": "application/fhir+json",
        }
        if data:
            environ["CONTENT_TYPE"] = "application/fhir+json"
            environ["CONTENT_LENGTH"] = str(len(data))
        answer = application(environ, lambda status, headers, exc=None: statuses.append(status))
        out = b"".join(answer)
        answer.close()  # type: ignore[attr-defined]
        return out

    body = (ROOT / "bench" / "wrk" / "patient.json").read_bytes()
    pid = json.loads(call("POST", "/fhir/R4/Patient", data=body))["id"]
    family = f"Instr{os.getpid()}"
    for _ in range(10):
        patient = {**json.loads(body), "name": [{"family": family, "given": ["Ten"]}]}
        call("POST", "/fhir/R4/Patient", data=json.dumps(patient).encode())
    sends = {
        "post": lambda: call("POST", "/fhir/R4/Patient", data=body),
        "get": lambda: call("GET", f"/fhir/R4/Patient/{pid}"),
        "search": lambda: call("GET", "/fhir/R4/Patient", f"family={family}"),
    }
    assert json.loads(sends["search"]())["total"] == 10
    for workload in args.workloads:
        send = sends[workload]
        for _ in range(5):
            send()  # warm
        statuses.clear()
        functools.reduce(lambda _, __: send(), range(args.requests), None)  # counted
        assert len(statuses) == args.requests
        assert all(s.startswith(("200", "201")) for s in statuses), set(statuses)
        print(workload, "done", file=sys.stderr)


if __name__ == "__main__":
    main()
