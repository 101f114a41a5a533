"""Text PostgreSQL cannot store, found before it gets there.

PostgreSQL refuses the NUL character in `text` and `jsonb` (a 500 if it reaches a
statement), and a value whose bytes were not UTF-8 arrives decoded with U+FFFD in
their place (Django and urllib decode with errors="replace"), which would silently
match something else. Every text the API takes from a request goes through
`unsafe(...)` at the point where it enters: the gateway (the query string of every
API request, the headers we store), the search parser (form bodies, bundle entries,
conditional headers) and the resource validator (every string in a body)."""

import re

# NUL, and U+FFFD: what a byte sequence that is not UTF-8 became when decoded.
_UNSAFE = re.compile("[\x00\ufffd]")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")


def unsafe(value: str) -> str | None:
    """Why `value` cannot be accepted, or None."""
    found = _UNSAFE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character"
    return "is not valid UTF-8"


def plain_name(name: str) -> str:
    """A parameter or header name as a diagnostic may quote it (short and plain)."""
    return name if _PLAIN_NAME.fullmatch(name) else "(a parameter with an unusual name)"
