import logging

from clinik.lib.logsafe import RedactExceptionMessages


def _record_with_exception(message: str) -> logging.LogRecord:
    try:
        raise ValueError(message)
    except ValueError:
        import sys

        return logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())


def test_exception_messages_are_dropped_but_the_traceback_kept() -> None:
    record = _record_with_exception("family=Doe birthdate=1970-01-01")
    record.request = object()
    assert RedactExceptionMessages().filter(record)
    formatted = logging.Formatter().format(record)
    assert "Doe" not in formatted
    assert "ValueError" in formatted
    assert "test_logsafe.py" in formatted
    assert not hasattr(record, "request")


def test_records_without_exceptions_pass_unchanged() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    assert RedactExceptionMessages().filter(record)
    assert record.getMessage() == "hello world"
