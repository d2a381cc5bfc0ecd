"""Celery tasks of the inventory: thin, idempotent wrappers around services (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from inventory import services


@shared_task(name="inventory.check_agents")
def check_agents_task() -> int:
    """Mark silent online servers unreachable; returns how many changed (same code as `manage.py check_agents`)."""
    return services.servers_mark_unreachable()
