"""Celery tasks of the inventory: thin, idempotent wrappers around services (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from inventory import services, telemetry


@shared_task(name="inventory.check_agents")
def check_agents_task() -> int:
    """Mark silent online servers unreachable; returns how many changed (same code as `manage.py check_agents`)."""
    return services.servers_mark_unreachable()


@shared_task(name="inventory.telemetry_rollup")
def telemetry_rollup_task() -> dict:
    """Aggregate finished minutes into the 1-minute and 1-hour tables (same code as `manage.py telemetry_rollup`)."""
    return telemetry.rollup()


@shared_task(name="inventory.telemetry_maintain")
def telemetry_maintain_task() -> dict:
    """Create the coming days' partitions and drop expired ones (same code as `manage.py telemetry_maintain`)."""
    return telemetry.maintain()
