"""RedactTracebackText: a traceback already formatted into a log message (as granian
logs an exception its Rust side caught) keeps frames and class names only."""

import logging

from clinik.lib.logsafe import RedactTracebackText

SECRET = "Doe-Secret-4711"


def _filtered(message: str) -> str:
    record = logging.LogRecord("_granian.utils", logging.ERROR, "f", 1, message, None, None)
    assert RedactTracebackText().filter(record)
    return record.getMessage()


def test_the_exception_message_and_its_continuation_lines_are_dropped() -> None:
    message = (
        "Application callable raised an exception\n"
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in stream\n'
        "    raise RuntimeError(query)\n"
        f"RuntimeError: the stream failed for family={SECRET}\n"
        f"{SECRET}\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "app.py", line 9, in close\n'
        "    cleanup()\n"
        f"ValueError: {SECRET}"
    )
    out = _filtered(message)
    assert SECRET not in out
    assert out.startswith("Application callable raised an exception\nTraceback")
    assert "\nRuntimeError\n" in out and out.endswith("\nValueError")
    assert '  File "app.py", line 9, in close' in out


def test_a_message_without_a_traceback_is_left_alone() -> None:
    assert _filtered("Started worker-1") == "Started worker-1"
