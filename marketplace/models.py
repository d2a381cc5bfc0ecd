"""The storefront's own table: one narrow search row per live offer (marketplace/listing_sql.py keeps it)."""

from __future__ import annotations

from django.db import models

from inventory.models import PLAN_PRICE_FIELDS, Offer


class ExactNumeric(models.DecimalField):
    """PostgreSQL `numeric` without precision or scale: keeps every digit (and the scale) of the value an expression
    gave, where a `numeric(p, s)` column would round it."""

    def db_type(self, connection) -> str:
        return "numeric"


def _price() -> models.DecimalField:
    return models.DecimalField(max_digits=14, decimal_places=4, null=True)


class OfferListing(models.Model):
    """A live offer as offer search reads it: everything its filters and orderings need, in one row, so that a search
    reads one table instead of joining every offer to its server, organisations and capacity and counting each
    server's reliability per request (marketplace.selectors.offers_listed).

    Kept by database triggers (marketplace/listing_sql.py) in the transaction that changes what it copies: the
    offer, its server, their organisations, the server's capacity row (scheduler.models.Capacity), its workloads and
    their leases' failures, its outages. Code never writes it, except `free_*` where `free_from_capacity` is false
    (below). Time-dependent parts are stored with the instant up to which they answer, as the capacity rows are:
    readers compute live from the source rows where a row does not answer for their instant."""

    offer = models.OneToOneField(
        Offer, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="listing"
    )
    server_id = models.BigIntegerField()
    # The conditions of a listed offer, as the offer, its server and the organisations say now.
    offer_org_active = models.BooleanField()  # the offer's organisation is active
    server_online = models.BooleanField()
    server_drained = models.BooleanField()
    provider_ok = models.BooleanField()  # the server's organisation is an active provider
    gpu_model_id = models.BigIntegerField()
    region = models.CharField(max_length=50)
    interconnect = models.CharField(max_length=20, blank=True)
    currency = models.CharField(max_length=3)
    available_until = models.DateTimeField(null=True)
    card_hour_price = _price()
    card_hour_interruptible_price = _price()
    server_month_price = _price()
    server_month_interruptible_price = _price()
    pflops_year_price = _price()
    pflops_year_interruptible_price = _price()
    offer_created_at = models.DateTimeField()
    server_created_at = models.DateTimeField()
    # Free cards: the server's capacity row's (NULL without one), copied by a trigger on that row while
    # `free_from_capacity`; false for an offer whose cards are not the server's free cards (a resale of a lease's
    # cards: NOT offer.is_resale): readers count its contract's free cards (scheduler.resale.free_resale_cards), and
    # the sync leaves `free_now` / `ok_cards` / `free_valid_until` to code that may keep them for such an offer.
    # Readers count live after `free_valid_until`.
    free_from_capacity = models.BooleanField(default=True)
    free_now = models.IntegerField(null=True)
    ok_cards = models.IntegerField(null=True)
    free_valid_until = models.DateTimeField(null=True)
    # Reliability's parts over the 30 days before `rel_as_of` (marketplace.selectors._reliability): workloads that
    # started / failed without running, closed outages wholly inside the window (seconds), those that began before it
    # (how many and the sum of their ends as epoch seconds: each counts from the window's start), the open outage's
    # start. They answer for instants from `rel_as_of` until `rel_valid_until` (a counted workload or outage leaves
    # the window, or an outage starts being cut by it).
    rel_started = models.IntegerField(default=0)
    rel_failed = models.IntegerField(default=0)
    rel_closed = models.IntegerField(default=0)
    rel_inside_seconds = models.DecimalField(max_digits=30, decimal_places=6, default=0)
    rel_straddling = models.IntegerField(default=0)
    rel_straddling_ends = models.DecimalField(max_digits=30, decimal_places=6, default=0)
    rel_open_since = models.DateTimeField(null=True)
    rel_as_of = models.DateTimeField()
    rel_valid_until = models.DateTimeField()
    # The reliability itself, where none of its parts moves with the clock (no open outage, none begun before the
    # window, a server older than the window): the same number the formula gives from the parts, read as is.
    rel_fixed = ExactNumeric(max_digits=100, decimal_places=50, null=True)

    class Meta:
        indexes = [models.Index(fields=["server_id"], name="offerlisting_server")]

    def __str__(self) -> str:
        return f"listing of offer {self.offer_id}"


# The listing's price columns are the offer's, by the same names (PLAN_PRICE_FIELDS).
assert {f for pair in PLAN_PRICE_FIELDS.values() for f in pair} <= {f.name for f in OfferListing._meta.fields}
