"""Retention purges in the house style: delete in batches ordered by an indexed
column, one batch per transaction, so a purge can be killed at any point and rerun
to the same end state (each run deletes only what is still past its cutoff)."""

from typing import Any

from django.db import transaction

BATCH = 5000


def delete_in_batches(queryset: Any, order_by: str, batch: int = BATCH) -> int:
    """Delete every row of `queryset`, `batch` rows at a time ordered by `order_by`
    (an indexed column); returns how many rows were deleted."""
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(queryset.order_by(order_by).values_list("pk", flat=True)[:batch])
            if not ids:
                return deleted
            deleted += queryset.model._base_manager.filter(pk__in=ids).delete()[0]
