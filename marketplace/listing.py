"""The offer listing's upkeep (marketplace.models.OfferListing, kept by triggers: marketplace/listing_sql.py)."""

from __future__ import annotations

from django.db import connection


def listings_refresh() -> int:
    """Sync again the listing rows whose reliability parts the clock has passed (a counted workload or outage left the
    30-day window, or an outage begun before it); returns how many servers. Searches never depend on it (they count
    such a row live); it keeps the live counts few. Idempotent; safe to run concurrently with anything."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT marketplace_listing_refresh()")
        return cursor.fetchone()[0]
