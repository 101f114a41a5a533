"""The full application with settings.DEBUG off, for bench/fhir_bench.py and
bench/search_bench.py (BENCH_DJANGO_DEBUG=false, the default there).

The environment keeps DEBUG=true, because DEBUG=false also demands production
configuration (TLS to PostgreSQL) that a local database does not offer; turning
settings.DEBUG off after the settings are read removes what DEBUG costs at run time
on the API path: Django's query log (the debug cursor wrapper)."""

from clinik.lib.env import env_bool
from clinik.settings import *  # noqa: F403

DEBUG = env_bool("BENCH_DJANGO_DEBUG", False)
