"""Wake the dispatcher at commit: LISTEN for the outbox trigger's NOTIFY (sent by
PostgreSQL when the writing transaction commits, never for one that rolls back) and
enqueue that tenant's dispatch at once. Beat's 1 s tick stays the safety net: a
notification missed while this process was down is picked up there."""

from typing import Any

import psycopg
from django.core.management.base import BaseCommand
from django.db import connection

from clinik.subscriptions.tasks import dispatch_tenant

CHANNEL = "subscriptions_outbox"


class Command(BaseCommand):
    help = "Enqueue a tenant's subscription dispatch as soon as its write commits."

    def handle(self, *args: Any, **options: Any) -> None:
        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            self.stdout.write("listening")
            self.stdout.flush()
            while True:
                # A burst of commits of one tenant becomes one task per 20 ms.
                orgs = {n.payload for n in listener.notifies(timeout=1.0, stop_after=1)}
                orgs |= {n.payload for n in listener.notifies(timeout=0.02)}
                for org_id in sorted(orgs):
                    dispatch_tenant.delay(org_id)
