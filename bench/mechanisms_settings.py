"""bench/nodebug_settings.py, with Django's own PostgreSQL backend in place of
clinik.lib.pgbackend when BENCH_MECHANISM_OFF names `pgbackend`
(bench/mechanisms_bench.py). Values stay bind parameters (`server_side_binding`),
as in ours, so what differs is only lazy BEGIN and deferred writes."""

import os

from bench.nodebug_settings import *  # noqa: F403
from bench.nodebug_settings import DATABASES

if "pgbackend" in os.environ.get("BENCH_MECHANISM_OFF", "").split(","):
    DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
    DATABASES["default"]["OPTIONS"] = {
        **DATABASES["default"]["OPTIONS"],  # type: ignore[dict-item]
        "server_side_binding": True,
    }
