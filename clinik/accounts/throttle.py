"""Sign-in throttling. Failures are counted per email (hashed, so the cache holds no
address) and per client IP; the answer is the same whether the email exists."""

import hashlib

from django.conf import settings
from django.core.cache import cache


def _keys(email: str, ip: str) -> list[str]:
    email_hash = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return [f"signin-fail:e:{email_hash}", f"signin-fail:ip:{ip}"]


def is_locked(email: str, ip: str) -> bool:
    counts = cache.get_many(_keys(email, ip))
    # An IP gets a larger allowance: several people may share one address.
    limits = [settings.SIGNIN_MAX_FAILURES, settings.SIGNIN_MAX_FAILURES * 4]
    pairs = zip(_keys(email, ip), limits, strict=True)
    return any(counts.get(key, 0) >= limit for key, limit in pairs)


def note_failure(email: str, ip: str) -> bool:
    """Count a failure. True when this one locks the email (it reaches the limit): the
    moment a lockout starts, reported once, not on every refused attempt after it."""
    counts = []
    for key in _keys(email, ip):
        count = 1
        if not cache.add(key, 1, timeout=settings.SIGNIN_LOCKOUT_SECONDS):
            try:
                count = cache.incr(key)
            except ValueError:
                cache.set(key, 1, timeout=settings.SIGNIN_LOCKOUT_SECONDS)
        counts.append(count)
    return counts[0] == settings.SIGNIN_MAX_FAILURES


def clear(email: str) -> None:
    cache.delete(_keys(email, "")[0])
