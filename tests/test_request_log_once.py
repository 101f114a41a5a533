"""Request log rows are a ledger billing reads: a batch stored twice (a Redis push that
timed out after Redis kept it, then the PostgreSQL fallback) is one set of rows and one
set of rollup counts."""

import uuid
from datetime import UTC, datetime

from clinik.usage import requestlog, store
from clinik.usage.models import HourlyUsage, RequestLog


def test_a_batch_pushed_to_redis_and_also_written_by_the_fallback_counts_once(owner) -> None:
    client = requestlog.redis_client()
    client.delete(store.BUFFER_KEY, store.DRAINING_KEY, store.TOKEN_KEY)
    now = datetime.now(UTC).timestamp()
    prefix = uuid.uuid4().hex[:8]
    records = [
        (
            now + i / 1000,
            str(owner.org.pk),
            None,
            "GET",
            "/fhir/R4/Patient",
            "Patient",
            200,
            800,
            10,
            f"{prefix}-{i}",
            None,
            None,
        )
        for i in range(25)
    ]
    requestlog.push(records)  # Redis kept them, but the client saw a timeout...
    assert store.write_records(records) == 25  # ...so the fallback wrote them too
    store.drain()  # the drain moves them again: the rows are there already
    assert store.write_records(records[:5]) == 0  # and any later repeat
    assert RequestLog.objects.filter(request_id__startswith=prefix).count() == 25
    counted = HourlyUsage.objects.filter(org_id=owner.org.pk, dim="all")
    assert sum(counted.values_list("requests", flat=True)) == 25
