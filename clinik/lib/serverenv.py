"""Keep the process environment out of request.META.

granian builds each WSGI environ from a copy of the server process's environment
(os.environ) updated with the request's variables, so without this every request's
META would carry DATABASE_URL, SECRET_KEY and every other secret of the process,
where an error page, a debug view or a careless log line could show them. A header
a client sends whose WSGI name is also the name of an environment variable (e.g.
`Proxy:` and HTTP_PROXY) is dropped along with it.
"""

import os
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Request variables a server sets from the request itself; an environment variable
# of the same name is unusual, and the request's value must win over removal.
_REQUEST_KEYS = frozenset(
    {
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "QUERY_STRING",
        "RAW_URI",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "REQUEST_METHOD",
        "REQUEST_URI",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)


def without_process_environment(app: WsgiApp) -> WsgiApp:
    """`app` called with an environ from which the variables of the process
    environment are removed (read at the first request, when the server's copy has
    been made)."""
    inherited: list[frozenset[str]] = []

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not inherited:
            inherited.append(frozenset(os.environ) - _REQUEST_KEYS)
        for name in inherited[0].intersection(environ):
            del environ[name]
        return app(environ, start_response)

    return application
