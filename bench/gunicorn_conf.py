"""gunicorn settings. FHIR search parameters carry PHI (docs/architecture.md, "Privacy
rules"), so no log line gunicorn writes carries a query string or the raw request line:
the access log format leaves them out, and the error log goes through `PhiSafeLogger`."""

import logging
import os
import re
from typing import Any

from gunicorn.glogging import Logger

from clinik.lib.logsafe import RedactExceptionMessages

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
accesslog = "-"
# %(U)s is the path without the query string; never %(r)s or %(q)s.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


# In a formatted error-log message: a query string after a request target, and what
# gunicorn quotes from a request it could not parse (the request line, or the part
# of it after a space inside the target, which may be a search value).
_QUERY = re.compile(r"(?<=\S)\?[^\s'\"]*")
_CLIENT_BYTES = re.compile(r"'[^\n]*'")


class RedactRequestTargets(logging.Filter):
    """Formats each record itself, so the message it rewrites is the one written:
    "Error handling request GET /fhir/R4/Patient?family=X" (a request whose WSGI call
    raised, e.g. a streamed body failing) keeps the path only; "Invalid request from
    ip=...: Invalid HTTP request line: '...'" keeps the kind of error only."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log the template alone
            message = str(record.msg)
        message = _QUERY.sub("", message)
        if message.startswith("Invalid request from"):
            message = _CLIENT_BYTES.sub("'…'", message)
        record.msg, record.args = message, ()
        return True


class PhiSafeLogger(Logger):
    """gunicorn's logger, with the error log redacted: no query strings, no request
    bytes gunicorn could not parse, tracebacks without exception messages."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if not any(isinstance(f, RedactRequestTargets) for f in self.error_log.filters):
            self.error_log.addFilter(RedactRequestTargets())
            self.error_log.addFilter(RedactExceptionMessages())


logger_class = PhiSafeLogger
