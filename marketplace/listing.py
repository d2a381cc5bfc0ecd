"""The offer listing's upkeep (marketplace.models.OfferListing, kept by triggers: marketplace/listing_sql.py)."""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models.functions import Now

from marketplace.models import OfferListing

# Servers a refresh syncs per transaction: at most 64 take per-server locks (a larger sync takes the one lock every
# sync shares, and would hold up every offer, server and workload change while it runs).
BATCH = 64


def listings_refresh(batch: int = BATCH) -> int:
    """Sync again the listing rows whose reliability parts the clock has passed (a counted workload or outage left the
    30-day window, or an outage begun before it), `batch` servers per transaction; returns how many servers. Searches
    never depend on it (they count such a row live); it keeps the live counts few. Idempotent; safe to run
    concurrently with anything."""
    stale = OfferListing.objects.filter(rel_valid_until__lte=Now())
    due = stale.values("server_id").distinct().count()
    done = 0
    while done < due:
        with transaction.atomic():
            ids = list(stale.order_by("server_id").values_list("server_id", flat=True).distinct()[:batch])
            if not ids:
                break
            with connection.cursor() as cursor:
                cursor.execute("SELECT marketplace_listing_sync(%s::bigint[])", [ids])
        done += len(ids)
    return done
