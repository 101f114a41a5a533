"""The web server's access log never contains query strings (FHIR searches carry PHI)."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gunicorn_access_log_has_path_but_no_query_string() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "clinik.wsgi",
            "--config",
            "clinik/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/security?family=Doe-Secret-Name&birthdate=1970-01-01"
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("gunicorn did not start")
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert '"GET /security" 200' in output
    assert "Doe-Secret-Name" not in output
    assert "birthdate" not in output
