"""Celery tasks of the scheduler: thin, idempotent wrappers around services (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from scheduler import elastic, lifecycle


@shared_task(name="scheduler.run_leases")
def run_leases_task() -> dict:
    """Start due reservations, end expired leases, finish preemptions, fail over (same as `manage.py run_leases`)."""
    return lifecycle.leases_run()


@shared_task(name="scheduler.failover")
def failover_task() -> dict:
    """Move leases off failed cards and unreachable servers now (run_leases also does it every 30 s)."""
    return lifecycle.failover_run()


@shared_task(name="scheduler.scale_leases")
def scale_leases_task() -> dict:
    """Follow the scaling rules of elastic leases (same as `manage.py scale_leases`; scheduler/elastic.py)."""
    return elastic.scale_leases()
