"""Celery tasks of billing: thin, idempotent wrappers around services (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from billing import services


@shared_task(name="billing.meter")
def meter_task() -> int:
    """Usage records for every allocation hour that is over (same as `manage.py meter`)."""
    return services.meter()


@shared_task(name="billing.close_last_period")
def close_last_period_task() -> dict:
    """Close the month before this one once it is over (same as `manage.py close_period` for it)."""
    return services.close_last_period()


@shared_task(name="billing.close_period")
def close_period_task(period: str) -> dict:
    """Close one month (same as `manage.py close_period YYYY-MM`); a rerun after a crash makes what is missing."""
    return services.close_period(period)


@shared_task(name="billing.mark_overdue")
def mark_overdue_task() -> int:
    return services.invoices_mark_overdue()


@shared_task(name="billing.check_funds")
def check_funds_task() -> dict:
    """Notify organisations whose money runs out, stop card-hour leases of those out after the notice, send spend
    alerts (same as `manage.py check_funds`)."""
    return services.funds_check()
