"""The API key format: `ck_live_` + 32 base62 characters of randomness (190 bits) +
a 6-character base62 CRC32 of everything before it, as GitHub's tokens do.

The checksum lets the gateway refuse a mistyped or made-up key without a database
query, and lets secret scanners recognize our keys with few false positives. The
checksum is not a secret: the security of a key is its random part alone.
"""

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32  # 32 * log2(62) = 190.5 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
LIVE = "ck_live_"
TEST = "ck_test_"  # reserved for sandbox keys
PREFIXES = (LIVE, TEST)
KEY_LENGTH = len(LIVE) + RANDOM_LENGTH + CHECKSUM_LENGTH
DISPLAY_RANDOM_CHARS = 4

_SHAPE = re.compile(rf"ck_(?:live|test)_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate(prefix: str = LIVE) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown key prefix {prefix!r}")
    body = prefix + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + checksum(body)


def is_well_formed(key: str) -> bool:
    """Shape and checksum: True for any key we could have issued, without I/O."""
    if len(key) != KEY_LENGTH or not _SHAPE.fullmatch(key):
        return False
    body, check = key[:-CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return secrets.compare_digest(checksum(body), check)


def digest(key: str) -> str:
    """What is stored: the SHA-256 of the whole key, hex."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def random_part(key: str) -> str:
    return key[len(LIVE) : len(LIVE) + RANDOM_LENGTH]


@dataclass(frozen=True)
class Hint:
    """The non-secret parts shown in the dashboard: `ck_live_AbCd…wxyz`."""

    prefix: str
    last4: str


def hint(key: str) -> Hint:
    return Hint(prefix=key[: len(LIVE) + DISPLAY_RANDOM_CHARS], last4=key[-4:])


def looks_like_key(value: str) -> bool:
    """For refusing keys sent where they would be logged (query strings)."""
    return LIVE in value or TEST in value
