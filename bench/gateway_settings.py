"""The application for bench/gateway_bench.py: the gateway in front of the trivial
endpoints of tests/gateway_probe_urls.py, so what is measured is the gateway alone.

BENCH_DJANGO_DEBUG=false turns settings.DEBUG off after the settings are read: the
environment keeps DEBUG=true, because DEBUG=false also demands production
configuration (TLS to PostgreSQL) that a local database does not offer. What DEBUG
costs on this path at run time is Django's query log (the debug cursor wrapper)."""

from clinik.lib.env import env_bool
from clinik.settings import *  # noqa: F403

ROOT_URLCONF = "tests.gateway_probe_urls"
DEBUG = env_bool("BENCH_DJANGO_DEBUG", True)
