"""The production web server: granian (a Rust HTTP server, hyper) calling clinik.wsgi
from a pool of threads in each worker process. `make run` (Procfile) and production
start it the same way:

    python -m clinik.serve

Chosen on the numbers of bench/fhir_bench.py (bench/README.md, "Server and floor"):
with the same 2 x 4 processes and threads it spends 20-30 % less CPU per request than
gunicorn gthread on every API workload (README, "The web server").

Settings come from the environment (README, configuration): BIND, WEB_CONCURRENCY,
WEB_THREADS, WEB_KEEPALIVE_SECONDS. There is no access log: API requests are in the
request log (clinik/usage), and a line per request through a pipe costs more than
the request's own logging. The server's own log goes through the redact filter
(clinik.lib.logsafe): no exception messages, no query strings (granian's log lines
carry no request target).

Keep-alive: hyper closes a connection that sends no request headers within the
header read timeout, which is also how long an idle keep-alive connection stays
open. It is set above every Retry-After the API sends (60 s at most) and above
common client pool idle times (KEEPALIVE_SECONDS), so a client reusing a pooled connection does not
race the server closing it (issue 13, item 5).

Request size: hyper refuses requests whose head (request line and headers) does not
fit its buffer with a bodiless 431. The buffer is larger than the gateway's own
limits (clinik/gateway/checks.py: check_request_head), so an oversized URL or header
set under /fhir/ is answered by the gateway as an OperationOutcome (414/431).
"""

import argparse
import os
from typing import Any

# Larger than the gateway's limits (FHIR_MAX_URL_BYTES, FHIR_MAX_HEADER_BYTES and the
# largest Authorization header it reads), so those answer as OperationOutcomes.
HEAD_BUFFER_BYTES = 256 * 1024
# Longer than every Retry-After the API sends (60 s at most: rate limits, a busy
# export) and than common client pools' idle times (Go 90 s, Node 5 s).
KEEPALIVE_SECONDS = 120


BLOCKING_THREADS_IDLE_SECONDS = 600


def log_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": "clinik.lib.logsafe.RedactExceptionMessages"},
            "redact_text": {"()": "clinik.lib.logsafe.RedactTracebackText"},
        },
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact", "redact_text"],
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": level, "propagate": False},
            # Never used (log_access is off), kept silent should it be turned on.
            "granian.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    value = int(raw) if raw else default
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


def server(app: str, bind: str, workers: int, threads: int, keepalive: int) -> Any:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    host, _, port = bind.rpartition(":")
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    return Granian(
        app,
        address=host.strip("[]") or "127.0.0.1",
        port=int(port),
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        # granian ends a thread idle this long; its Django database connection (one
        # per thread) goes with it and the next request pays a new connection. Keep
        # them as long as granian allows.
        blocking_threads_idle_timeout=BLOCKING_THREADS_IDLE_SECONDS,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=keepalive * 1000,
            keep_alive=True,
            max_buffer_size=HEAD_BUFFER_BYTES,
        ),
        log_enabled=True,
        log_level=LogLevels(level.lower())
        if level.lower() in LogLevels.__members__
        else LogLevels.info,
        log_dictconfig=log_config(level),
        log_access=False,
        respawn_failed_workers=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="clinik.wsgi:application")
    parser.add_argument("--bind", default=os.environ.get("BIND", "127.0.0.1:8000"))
    parser.add_argument("--workers", type=int, default=_int("WEB_CONCURRENCY", 2))
    parser.add_argument("--threads", type=int, default=_int("WEB_THREADS", 4))
    parser.add_argument(
        "--keepalive", type=int, default=_int("WEB_KEEPALIVE_SECONDS", KEEPALIVE_SECONDS)
    )
    args = parser.parse_args(argv)
    server(args.app, args.bind, args.workers, args.threads, args.keepalive).serve()


if __name__ == "__main__":
    main()
