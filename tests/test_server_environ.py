"""The production server (granian) copies the process environment into every WSGI
environ; clinik.wsgi's wrapper (clinik/lib/serverenv.py) keeps secrets out of
request.META. Both apps are served for real; the unwrapped one shows the leak."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.liveserver import serve

MARKER = "env-secret-5150"
REQUEST = (
    b"GET /x?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy: from-client\r\n"
    b"X-Custom: kept\r\nConnection: close\r\n\r\n"
)


Served = Callable[[str], dict[str, str]]


@pytest.fixture
def environ_of(tmp_path: Path, django_db_setup: None) -> Served:
    def served(app: str) -> dict[str, str]:
        env = {"CLINIK_TEST_SECRET": MARKER, "HTTP_PROXY": "http://proxy.invalid:3128"}
        with serve(tmp_path, app=app, env=env) as server:
            status, _headers, body = server.exchange(REQUEST)
        assert status == 200
        return dict(json.loads(body))

    return served


def test_the_wrapped_app_sees_the_request_and_not_the_process_environment(
    environ_of: Served,
) -> None:
    environ = environ_of("tests.environ_app:application")
    assert MARKER not in json.dumps(environ)
    assert "DATABASE_URL" not in environ and "PATH" not in environ
    assert "HTTP_PROXY" not in environ  # neither the server's nor the client's Proxy:
    assert environ["HTTP_X_CUSTOM"] == "kept"
    assert environ["PATH_INFO"] == "/x" and environ["QUERY_STRING"] == "q=1"
    assert environ["REQUEST_METHOD"] == "GET"


def test_unwrapped_the_server_would_hand_the_environment_to_the_app(environ_of: Served) -> None:
    environ = environ_of("tests.environ_app:unwrapped")
    assert environ["CLINIK_TEST_SECRET"] == MARKER
    assert "DATABASE_URL" in environ
