"""A stopped lease that starts again brings its workload back (registered into scheduler/restarts.py by
workloads/apps.py; `scheduler.services.lease_start` calls it inside its transaction).

While the lease was stopped its workload was left out of the server's desired state (its lease not active), so the
agent removed the container and kept its volumes. Now its workload row on that server is asked for afresh: the
next generation, desired running, and shown `pending` until the agent reports it again, so the customer sees it
start. The row keeps `started_at` (the lease has run, so billing charges card time from its new cards' start and
a slow start is not taken for a workload that never ran); one that never ran gets its start timeout from now.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import F

from accounts.errors import Conflict
from scheduler.models import Lease
from workloads.models import Workload, WorkloadState


def lease_restarted(lease: Lease, now: datetime) -> None:
    """Ask the agent of `lease.server` for the lease's workload again (see the module's docstring); refused (409
    `volume_moving`, the start rolls back) while the lease's volumes move to another server for it."""
    from workloads import lease_moves

    if lease_moves.lease_moving(lease):
        raise Conflict(
            "This lease's volumes are being moved to another server; it starts there once they are.",
            code="volume_moving",
        )
    rows = Workload.objects.filter(lease=lease, server_id=lease.server_id)
    rows.update(
        desired=Workload.Desired.RUNNING,
        generation=F("generation") + 1,
        state=WorkloadState.PENDING,
        progress=None,
        message="",
        exit_code=None,
        ports={},
        state_changed_at=now,
    )
    # workloads.checks fails a workload not running within the start timeout of its created_at.
    rows.filter(started_at__isnull=True).update(created_at=now)
