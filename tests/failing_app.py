"""clinik.wsgi for tests/test_server_logs.py, plus the one kind of failure only the
web server can log: a response body that raises before its first byte, as a streamed
body (an export file, say) can. Django has returned by then, so the error reaches
the server. Requests with the header X-Fail-While-Streaming fail that way."""

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from clinik.wsgi import application as project


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = project(environ, start_response)
    if "HTTP_X_FAIL_WHILE_STREAMING" not in environ:
        return body
    return _failing(body, str(environ.get("QUERY_STRING", "")))


def _failing(body: Iterable[bytes], query: str) -> Iterator[bytes]:
    try:
        # The message carries the query string, as an exception's message may carry
        # the value that caused it.
        raise RuntimeError(f"the stream failed for {query}")
        yield b""  # a generator: the error comes when the server starts iterating
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
