"""Latency histograms with fixed log-scale buckets, so that rollups of any size
add up bucket by bucket and percentiles stay right when aggregated.

Bucket i counts latencies up to BOUNDS_US[i] (and above the previous bound); the
last bucket counts everything slower than the last bound."""

import bisect
import math
from collections.abc import Sequence

# 100 us * sqrt(2)^k: 100 us ... ~74 s, then one overflow bucket.
BOUNDS_US: tuple[int, ...] = tuple(round(100 * 2 ** (k / 2)) for k in range(40))
SIZE = len(BOUNDS_US) + 1


def bucket(latency_us: int) -> int:
    return bisect.bisect_left(BOUNDS_US, latency_us)


def empty() -> list[int]:
    return [0] * SIZE


def add(into: list[int], other: Sequence[int]) -> list[int]:
    for i, count in enumerate(other):
        into[i] += count
    return into


def percentile(hist: Sequence[int], p: float) -> float | None:
    """The p-th percentile in milliseconds, interpolated geometrically inside its
    bucket (linearly in the first); None for an empty histogram."""
    total = sum(hist)
    if total == 0:
        return None
    rank = p / 100 * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            if i >= len(BOUNDS_US):
                return BOUNDS_US[-1] / 1000
            upper = BOUNDS_US[i]
            fraction = max(0.0, min(1.0, (rank - seen) / count))
            if i == 0:
                return upper * fraction / 1000
            lower = BOUNDS_US[i - 1]
            return lower * math.pow(upper / lower, fraction) / 1000
        seen += count
    return BOUNDS_US[-1] / 1000
