"""Value helpers shared by indexing and querying, so both sides agree exactly: string
normalization, FHIR date precision ranges and decimal precision ranges."""

import re
import unicodedata
from calendar import monthrange
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

# Longest indexed string, in characters after normalization. A btree entry must stay
# under ~2.7 kB, and narrative-sized markdown (conformance descriptions) would not.
MAX_INDEXED_CHARS = 300
# The highest code point sorts after every other character in COLLATE "C" (byte
# order), so `value >= p AND value < p || MAX_CHAR` selects exactly the prefix p.
MAX_CHAR = "\U0010ffff"

LOWEST = datetime(1, 1, 1, tzinfo=UTC)
HIGHEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def normalize(text: str) -> str:
    """Case- and accent-insensitive form (FHIR string search): NFKD, combining marks
    removed, casefolded, truncated to what the index holds."""
    if text.isascii():  # the same answer, faster: ASCII has no decompositions or marks
        return text.lower()[:MAX_INDEXED_CHARS]
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()[:MAX_INDEXED_CHARS]


def clip(text: str) -> str:
    return text[:MAX_INDEXED_CHARS]


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) of every normalized value that starts with prefix."""
    return prefix, prefix + MAX_CHAR


def date_range(raw: str) -> tuple[datetime, datetime] | None:
    """The period a FHIR date, dateTime or instant stands for, both ends inclusive
    (`2024-03` is all of March 2024), or None when raw is not a date. A time
    without a timezone is taken as UTC (search values may omit it)."""
    match = _DATE.fullmatch(raw.strip())
    if not match:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["y"])
        month = int(parts["m"] or 1)
        day = int(parts["d"] or 1)
        hour, minute = int(parts["H"] or 0), int(parts["M"] or 0)
        second = int(parts["S"] or 0)
        fraction = parts["f"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        tz: timezone = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            offset = timedelta(hours=int(parts["tz"][1:3]), minutes=int(parts["tz"][4:6]))
            tz = timezone(sign * offset)
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None
    if parts["f"]:
        end = start + timedelta(microseconds=1)
    elif parts["S"]:
        end = start + timedelta(seconds=1)
    elif parts["H"]:
        end = start + timedelta(minutes=1)
    elif parts["d"]:
        end = start + timedelta(days=1)
    elif parts["m"]:
        end = start + timedelta(days=monthrange(year, month)[1])
    elif year < 9999:
        end = start.replace(year=year + 1)
    else:
        return start.astimezone(UTC), HIGHEST
    try:
        return start.astimezone(UTC), (end - timedelta(microseconds=1)).astimezone(UTC)
    except OverflowError:
        return None


def parse_decimal(raw: str) -> Decimal | None:
    if not _NUMBER.fullmatch(raw.strip()):
        return None
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def decimal_range(value: Decimal) -> tuple[float, float]:
    """The implicit range of a search number, by its significant digits: 100 means
    [99.5, 100.5), 100.0 means [99.95, 100.05), 1e2 means [50, 150)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return float(value - half), float(value + half)
