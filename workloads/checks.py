"""The periodic check of workloads (beat `check-workloads`, `manage.py check_workloads`): leases whose workload did
not start in time, cards not reported clean in time, volumes not made in time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from inventory.models import Gpu
from scheduler import services as scheduler
from scheduler.models import LeaseState, Plan
from workloads import volumes
from workloads.models import Workload, WorkloadState


def workloads_check(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job (beat every 30 s, `manage.py check_workloads`): fail card-hour leases whose workload is
    not running within the start timeout (uncharged), drain cards not reported clean within the clean timeout,
    record the end of data-access sessions past their maximum duration, and give up on volumes not made within
    SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS. Idempotent; safe to run concurrently
    (lease_fail locks and re-checks the lease)."""
    now = now or timezone.now()
    start_deadline = now - timedelta(seconds=settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS)
    late = (
        Workload.objects.filter(lease__state=LeaseState.ACTIVE, started_at__isnull=True, created_at__lt=start_deadline)
        .filter(Q(lease__plan=Plan.CARD_HOUR) | Q(lease__interruptible=True))
        .exclude(state=WorkloadState.CLEANED)
        # A lease that has run somewhere (and been charged) is not failed for a slow start after a failover.
        .exclude(lease__workloads__started_at__isnull=False)
        .select_related("lease")
        .order_by("lease_id")
    )
    failed = 0
    for workload in late:
        minutes = settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS // 60
        reason = f"the workload was not running within {minutes} minutes ({workload.state})"
        failed += scheduler.lease_fail(lease=workload.lease, reason=reason, now=now)
    clean_deadline = now - timedelta(seconds=settings.SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS)
    drained = Gpu.objects.filter(needs_cleaning=True, drained=False, clean_requested_at__lt=clean_deadline).update(
        drained=True, drained_reason="automatic: not reported clean after a workload ended"
    )
    # Data-access sessions past their maximum duration (their agents removed the containers at stop_by already).
    from workloads.data_access import data_access_expire  # data access sits above the checks' imports

    expired = data_access_expire(now=now)
    # Volumes their agents did not make in time (workloads.volumes: sent to wiping, never billed).
    not_made = volumes.volumes_not_made(now=now)
    return {"failed": failed, "drained_unclean": drained, "data_access_expired": expired, "volumes_not_made": not_made}
