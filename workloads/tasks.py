"""Celery tasks of workloads: thin, idempotent wrappers around services and checks (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from workloads import checks, volumes


@shared_task(name="workloads.check_workloads")
def check_workloads_task() -> dict:
    """Fail card-hour leases whose workload did not start in time; drain cards not reported clean (same as
    `manage.py check_workloads`)."""
    return checks.workloads_check()


@shared_task(name="workloads.wipe_volumes")
def wipe_volumes_task() -> dict:
    """Send volumes whose grace period has run out to wiping (same as `manage.py wipe_volumes`)."""
    return volumes.wipe_volumes()
