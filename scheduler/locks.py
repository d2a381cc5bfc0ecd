"""Row locks on cards, taken before an allocation is written.

Every writer of allocations locks the card rows first (`FOR NO KEY UPDATE`: allocators exclude each other while
the foreign-key checks of inserts, which take `KEY SHARE`, still pass). The usual path skips cards another
transaction holds (`SKIP LOCKED`), so racing requests spread over different cards instead of queueing on the
same one; a claim first takes the server's capacity row (`FOR UPDATE SKIP LOCKED`; the capacity triggers lock it when
the allocations are inserted), so racing requests whose best server is the same do not queue behind each other's
inserts either: the one that finds it locked tries the next-best server. A request that comes up short only because
cards or capacity rows were locked waits once for those locks (`wait_for_cards`, blocking, cards in primary-key
order, then the rows) before it may answer `no_capacity`, so a competitor that then rolls back never makes it fail.
The exclusion constraint stays the last word.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import connection
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import BooleanField, F, OuterRef, QuerySet, Subquery
from django.db.models.expressions import RawSQL

from inventory.models import PLAN_PRICE_FIELDS, Gpu
from scheduler import selectors, statements
from scheduler.models import Capacity
from scheduler.selectors import Filters

# The claim's gate on the server's capacity row (scheduler.models.Capacity), which the capacity triggers lock `FOR
# UPDATE` when this transaction inserts its allocations and keep locked until it ends: taken here first, `SKIP LOCKED`,
# so that a request whose best server another transaction is allocating on (or recounting) does not queue behind it
# in the insert but is short there and tries the next-best server, as a locked card is skipped. A server without a
# capacity row (none is counted yet) passes. Both subqueries are uncorrelated: PostgreSQL evaluates them once, before
# any card row, so a locked row locks no card either.
_CAPACITY_ROW_FREE = (
    "(NOT EXISTS (SELECT 1 FROM scheduler_capacity WHERE server_id = %s)"
    " OR EXISTS (SELECT 1 FROM scheduler_capacity WHERE server_id = %s FOR UPDATE SKIP LOCKED))"
)


def claim_free_cards(
    *, server_id: int, count: int, period: DateTimeTZRange, filters: Filters, savepoint: str | None = None
) -> list[Gpu]:
    """Lock up to `count` free allocatable cards of `server_id` (lowest ids first), skipping locked ones.

    Returns the cards locked (fewer than `count` means the server cannot take the request right now), read in the
    same statement with what placing and pricing them needs: their uuid, `card_tflops` (their model's rated FP16
    TFLOPS), `server_gpu_count`, and with a plan in `filters`, `offer_price` and `offer_currency` (its price and
    currency in the server's live offer for the plan as `filters` asks it: None without one). None at all when the
    server's capacity row is locked by another transaction (`_CAPACITY_ROW_FREE`); the row is held otherwise. Their
    other fields are deferred. `savepoint` (a name from `savepoint_name`): that savepoint is taken just before the
    claim, in the same round trip (`transaction.savepoint_rollback` returns to it).
    """

    def build(stand_in: Mapping[str, Any]) -> QuerySet:
        cards = (
            selectors.free_gpus(filters, stand_in[slot])
            .filter(server_id=stand_in["server_id"])
            .only("id", "uuid", "server_id")
            .annotate(card_tflops=F("server__gpu_model__fp16_tflops"), server_gpu_count=F("server__gpu_count"))
        )
        if filters.plan:
            offer = (
                selectors.live_offers(plan=filters.plan, interruptible=filters.interruptible, until=filters.until)
                .filter(server_id=OuterRef("server_id"))
                .order_by("-pk")
            )
            price_field = PLAN_PRICE_FIELDS[filters.plan][1 if filters.interruptible else 0]
            cards = cards.annotate(
                offer_price=Subquery(offer.values(price_field)[:1]),
                offer_currency=Subquery(offer.values("currency")[:1]),
            )
        # The server's capacity row first (a one-time filter, before any card is read): locked by another writer of
        # the server, the claim gets no card there, and placement moves on to the next-best server.
        gate = RawSQL(_CAPACITY_ROW_FREE, (stand_in["server_id"], stand_in["server_id"]), output_field=BooleanField())  # noqa: S611 - constant SQL, bound parameters
        cards = cards.filter(gate)
        return cards.order_by("pk").select_for_update(no_key=True, skip_locked=True, of=("self",))[:count]

    # Built and compiled once per filters, count and kind of period (scheduler/statements.py): only the period and
    # the server change.
    slot = "open_period" if period.upper is None else "period"
    sql, params = statements.compiled(("claim", filters, count, slot), build, {slot: period, "server_id": server_id})
    before = f"SAVEPOINT {connection.ops.quote_name(savepoint)}" if savepoint is not None else None
    return _cards(statements.fetch_dicts(sql, params, before=before))


def savepoint_name() -> str:
    """A new name for the savepoint `claim_free_cards` takes, unique in the connection's transaction as Django's own
    savepoints' are (it counts on the same counter)."""
    connection.savepoint_state += 1
    return f"claim_{connection.savepoint_state}"


def _cards(rows: list[dict[str, Any]]) -> list[Gpu]:
    """The claim's rows as cards, as `Gpu.objects.raw` makes them: the columns that are the card's fields loaded (the
    others deferred), the rest set as attributes."""
    fields = [field.attname for field in Gpu._meta.concrete_fields]
    loaded = set(fields)
    cards = []
    for row in rows:
        names = [name for name in fields if name in row]  # `from_db` takes them in the model's order
        card = Gpu.from_db(connection.alias, names, [row[name] for name in names])
        for name, value in row.items():
            if name not in loaded:
                setattr(card, name, value)
        cards.append(card)
    return cards


def claim_gpus(gpu_ids: Iterable[int]) -> list[int]:
    """Lock exactly these cards, skipping locked ones; returns the ids locked."""
    return list(
        Gpu.objects.filter(pk__in=list(gpu_ids))
        .order_by("pk")
        .select_for_update(no_key=True, skip_locked=True)
        .values_list("pk", flat=True)
    )


def wait_for_cards(*, server_ids: Iterable[int], period: DateTimeTZRange, filters: Filters) -> int:
    """Block until the free-looking cards of `server_ids` are unlocked, then hold them (primary-key order), and then
    their servers' capacity rows (server order), which the claim skips when locked: held by this transaction, they
    no longer keep its next claims off those servers. Cards before capacity rows, as an allocation insert takes them
    (its capacity triggers lock the rows of the cards it holds), so two waiters, or a waiter and an inserter, cannot
    deadlock each other. Returns how many cards were locked."""
    server_ids = sorted(set(server_ids))
    cards = list(
        selectors.free_gpus(filters, period)
        .filter(server_id__in=server_ids)
        .order_by("pk")
        .select_for_update(no_key=True, of=("self",))
        .values_list("pk", flat=True)
    )
    list(
        Capacity.objects.filter(server_id__in=server_ids)
        .order_by("server_id")
        .select_for_update()
        .values_list("server_id", flat=True)
    )
    return len(cards)
