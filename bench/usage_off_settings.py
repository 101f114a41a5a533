"""clinik.settings without request logging (`USAGE_BENCH_OFF=log`) or without request
logging and auditing (`USAGE_BENCH_OFF=log,audit`): the baselines of
bench/usage_bench.py. Bench-only: the product has no switch for either."""

import os

import clinik.audit
import clinik.usage.requestlog
from clinik.settings import *  # noqa: F403

_OFF = set(os.environ.get("USAGE_BENCH_OFF", "log").split(","))
if "log" in _OFF:
    clinik.usage.requestlog.note = lambda request, response, started: None
if "audit" in _OFF:
    clinik.audit.record = lambda action, **kwargs: None  # type: ignore[assignment]
