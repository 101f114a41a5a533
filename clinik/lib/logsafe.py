"""Logging filters that keep PHI out of log output.

Exception messages can carry the values that caused them (a search value, a field
of a resource), so tracebacks are logged with the exception's class and the code
location only. Request objects attached to records are dropped.
"""

import logging
import re
import traceback


class RedactExceptionMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _exc, tb = record.exc_info
            frames = "".join(traceback.format_tb(tb))
            record.exc_text = f"Traceback (most recent call last):\n{frames}{exc_type.__name__}"
            record.exc_info = None
        if hasattr(record, "request"):
            del record.request
        return True


_EXCEPTION_CLASS = re.compile(r"([A-Za-z_][\w.]*)(?::.*)?")
_HEADERS = ("Traceback (most recent", "During handling of", "The above exception")


class RedactTracebackText(logging.Filter):
    """For log records whose message already holds a formatted traceback (as the web
    server logs an exception its Rust side caught): keep the headers, the frames and
    the exception's class; drop the exception's message, which is the rest of the
    first unindented line after the frames and every unindented line after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log the template alone
            message = str(record.msg)
        head, marker, rest = message.partition("\nTraceback (most recent call last):\n")
        if not marker:
            return True
        kept, after_frames = [], False
        for line in rest.split("\n"):
            if line.startswith(_HEADERS):
                kept.append(line)
                after_frames = False
            elif line.startswith((" ", "\t")):
                kept.append(line)
                after_frames = True
            elif after_frames:  # the exception line: its class only
                match = _EXCEPTION_CLASS.fullmatch(line)
                kept.append(match.group(1) if match else "<exception>")
                after_frames = False
        record.msg, record.args = head + marker + "\n".join(kept), ()
        return True
