"""For bench/search_bench.py only, until clinik/urls.py mounts clinik.fhir.urls."""

from clinik.settings import *  # noqa: F403

ROOT_URLCONF = "bench.search_urls"
