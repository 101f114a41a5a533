"""The configured FHIR store (FHIR_STORE=postgres or healthlake)."""

from functools import cache

from django.conf import settings

from clinik.fhir.store.base import FhirStore, HistoryPage, Version, VersionConflict

__all__ = [
    "FhirStore",
    "HistoryPage",
    "Version",
    "VersionConflict",
    "get_store",
]


def get_store() -> FhirStore:
    return _store(settings.FHIR_STORE, settings.FHIR_TAG_WALL)


@cache
def _store(backend: str, tag_wall: bool) -> FhirStore:
    if backend == "postgres":
        from clinik.fhir.store.postgres import PostgresStore

        return PostgresStore(tag_wall=tag_wall)
    if backend == "healthlake":
        from clinik.fhir.store.healthlake_setup import build_store

        return build_store()
    raise ValueError(f"unknown FHIR_STORE {backend!r}")
