"""The HTTP servers the benchmarks can put in front of a WSGI application, by name.

Each candidate gets the same budget on this 2-core machine: 2 processes with 4
threads each (unless its name says otherwise), no access log unless its name says
so. `command(name, app, port)` is the command line; `app` is "module:attribute".
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent

CANDIDATES = (
    # What `make run` served before issue 15: honcho in front (a pipe for every
    # log line), gunicorn gthread 2x4 with bench/gunicorn_conf.py's access log.
    "gunicorn-honcho-accesslog",
    # The same gunicorn settings without the access log and without honcho.
    "gunicorn-gthread",
    # Rust HTTP server (hyper) calling the WSGI app from a pool of blocking threads.
    "granian",
    "granian-2x2",
    # uWSGI (the pyuwsgi wheel), HTTP/1.1 keep-alive socket, no request log.
    "uwsgi",
)
CHOSEN = "granian"


def command(name: str, app: str, port: int) -> list[str]:
    module, _, attribute = app.partition(":")
    attribute = attribute or "application"
    if name == "granian":
        return _granian(f"{module}:{attribute}", port)
    if name == "granian-2x2":
        return _granian(f"{module}:{attribute}", port, threads=2)
    if name == "gunicorn-gthread":
        return [
            PY, "-m", "gunicorn", f"{module}:{attribute}", "--config", "bench/gunicorn_conf.py",
            "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null",
        ]  # fmt: skip
    if name == "gunicorn-honcho-accesslog":
        procfile = Path(tempfile.mkdtemp()) / "Procfile"
        procfile.write_text(
            f"web: {PY} -m gunicorn {module}:{attribute} --config bench/gunicorn_conf.py"
            f" --bind 127.0.0.1:{port}\n"
        )
        return [str(BIN / "honcho"), "start", "-f", str(procfile), "-d", str(ROOT)]
    if name == "uwsgi":
        return [
            str(BIN / "pyuwsgi"), "--http11-socket", f"127.0.0.1:{port}", "--module",
            f"{module}:{attribute}", "--master", "--processes", "2", "--threads", "4",
            "--lazy-apps", "--disable-logging", "--die-on-term", "--need-app",
            "--buffer-size", "32768", "--chdir", str(ROOT),
        ]  # fmt: skip
    raise ValueError(f"unknown server {name!r}: one of {', '.join(CANDIDATES)}")


def _granian(target: str, port: int, threads: int = 4) -> list[str]:
    """The production command (clinik/serve.py) with the target and port replaced."""
    return [
        PY, "-m", "clinik.serve", "--app", target, "--bind", f"127.0.0.1:{port}",
        "--workers", "2", "--threads", str(threads),
    ]  # fmt: skip


def environment(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
