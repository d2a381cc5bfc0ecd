"""What the storefront's search page reads besides the offers themselves (marketplace.selectors.offers_listed).

The region filter's choices are the regions of listed offers on online servers (as marketplace.selectors.listed_regions
answers them). `SELECT DISTINCT region` read the whole offer listing for a handful of values: ~3 ms of every page at
12,500 servers (issue 18). Here the same set is read by skipping along the partial index on those regions
(offerlisting_online_region, migration 0002): one index probe per region, whatever the fleet's size. Nothing is cached,
so a region shows (or goes) with the listing row that brings (or takes) it, in the same transaction.
"""

from __future__ import annotations

from django.db import connections

from accounts.databases import read_alias
from marketplace.models import OfferListing

# A loose index scan: the smallest region, then repeatedly the smallest one above the last, until none is left.
_REGIONS_SQL = """
WITH RECURSIVE listed(region) AS (
    (SELECT region FROM {table} WHERE server_online ORDER BY region LIMIT 1)
  UNION ALL
    SELECT (SELECT l.region FROM {table} l WHERE l.server_online AND l.region > listed.region
             ORDER BY l.region LIMIT 1)
      FROM listed
     WHERE listed.region IS NOT NULL
)
SELECT region FROM listed WHERE region IS NOT NULL
"""


def listed_regions() -> list[str]:
    """The regions of listed offers on online servers, sorted as PostgreSQL sorts them (the ORM's ORDER BY)."""
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(_REGIONS_SQL.format(table=OfferListing._meta.db_table))
        return [region for (region,) in cursor.fetchall()]
