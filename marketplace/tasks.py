"""Celery tasks of the storefront: thin wrappers (beat schedule in settings)."""

from __future__ import annotations

from celery import shared_task

from marketplace.listing import listings_refresh


@shared_task(name="marketplace.refresh_listings")
def refresh_listings_task() -> int:
    """Sync the offer listing's rows whose time has passed (same as `manage.py refresh_listings`)."""
    return listings_refresh()
