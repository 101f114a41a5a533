"""Two WSGI apps for tests/test_server_environ.py, served by clinik/serve.py: each
answers the names and values of its environ as JSON; `application` is wrapped the
way clinik.wsgi wraps the project, `unwrapped` is not."""

import json
from collections.abc import Callable, Iterable
from typing import Any

from clinik.lib.serverenv import without_process_environment


def unwrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


application = without_process_environment(unwrapped)
