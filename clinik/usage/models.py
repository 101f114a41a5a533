"""Usage data. The two log tables are partitioned by day (migration 0001 creates
them with SQL: Django does not manage declarative partitioning), so dropping a
partition is the 90-day purge. Rollups keep counts and latency histograms per
hour and per day for the Usage page.

None of these hold PHI: the route is a template (`/fhir/R4/Patient/{id}`), never a
path with ids, a query string, a body or a header value."""

from django.contrib.postgres.fields import ArrayField
from django.db import models


class RequestLog(models.Model):
    """One API request, including the ones the gateway refused."""

    pk = models.CompositePrimaryKey("time", "id")
    id = models.BigIntegerField()
    time = models.DateTimeField()
    org_id = models.UUIDField(null=True)
    key_id = models.BigIntegerField(null=True)
    method = models.CharField(max_length=10)
    route = models.CharField(max_length=160)
    resource_type = models.CharField(max_length=64)
    status = models.SmallIntegerField()
    latency_us = models.IntegerField()
    response_bytes = models.BigIntegerField()
    request_id = models.CharField(max_length=64)

    class Meta:
        managed = False
        db_table = "usage_requestlog"

    def __str__(self) -> str:
        return f"{self.method} {self.route} {self.status}"

    @property
    def latency_ms(self) -> float:
        return self.latency_us / 1000


class ErrorLog(models.Model):
    """The server-side record of a failed request (status >= 400): the exception
    class (or the OperationOutcome's issue code) and a message built only from the
    status and that code, never from the request or the exception's text."""

    pk = models.CompositePrimaryKey("time", "id")
    id = models.BigIntegerField()
    time = models.DateTimeField()
    org_id = models.UUIDField(null=True)
    key_id = models.BigIntegerField(null=True)
    method = models.CharField(max_length=10)
    route = models.CharField(max_length=160)
    status = models.SmallIntegerField()
    error_class = models.CharField(max_length=100)
    message = models.CharField(max_length=200)
    request_id = models.CharField(max_length=64)

    class Meta:
        managed = False
        db_table = "usage_errorlog"

    def __str__(self) -> str:
        return f"{self.status} {self.error_class}"


class Rollup(models.Model):
    """Counts and a latency histogram per time bucket (an hour, or a day) and per one
    dimension of what the Usage page shows: `all` (the time series), `route` (route
    and method), `key` (API key), `error` (status, route and method; statuses of
    400 and up) or `hook` (webhook delivery attempts: `requests` counts attempts,
    `client_errors` those answered 3xx/4xx, `server_errors` those answered 5xx or not
    at all; no endpoint, no resource, only counts and latency). One narrow row set
    per panel keeps each panel's query small at any volume; histograms add up bucket
    by bucket (usage.histogram), so percentiles of any range are right."""

    class Dim(models.TextChoices):
        ALL = "all"
        ROUTE = "route"
        KEY = "key"
        ERROR = "error"
        HOOK = "hook"

    org_id = models.UUIDField()
    dim = models.CharField(max_length=5, choices=Dim.choices, default=Dim.ALL)
    bucket = models.DateTimeField()
    key_id = models.BigIntegerField(null=True)
    route = models.CharField(max_length=160, default="")
    method = models.CharField(max_length=10, default="")
    status = models.SmallIntegerField(default=0)
    requests = models.BigIntegerField()
    client_errors = models.BigIntegerField(default=0)
    server_errors = models.BigIntegerField(default=0)
    throttled = models.BigIntegerField(default=0)
    response_bytes = models.BigIntegerField(default=0)
    latency_us_sum = models.BigIntegerField(default=0)
    hist = ArrayField(models.BigIntegerField())

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.dim} {self.bucket}: {self.requests}"


_ROLLUP_KEY = ["org_id", "dim", "bucket", "key_id", "route", "method", "status"]


class HourlyUsage(Rollup):
    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=_ROLLUP_KEY, name="usage_hourly_key", nulls_distinct=False
            )
        ]


class DailyUsage(Rollup):
    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=_ROLLUP_KEY, name="usage_daily_key", nulls_distinct=False
            )
        ]


class DrainMark(models.Model):
    """How far the drainer got in one claimed Redis batch, written in the same
    transaction as the rows: a batch is stored exactly once, however often the
    drainer is killed and rerun."""

    token = models.CharField(max_length=40, unique=True)
    offset = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.token} @ {self.offset}"
