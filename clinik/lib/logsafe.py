"""Logging filters that keep PHI out of log output.

Exception messages can carry the values that caused them (a search value, a field
of a resource), so tracebacks are logged with the exception's class and the code
location only. Request objects attached to records are dropped.
"""

import logging
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
