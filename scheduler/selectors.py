"""Reads of the scheduler: which cards can be allocated, free capacity per server, a tenant's leases."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Now
from django.utils import timezone

from accounts.models import Organization
from accounts.tenancy import scoped
from inventory import telemetry
from inventory.access import STOREFRONT
from inventory.models import PLAN_PRICE_FIELDS, Gpu, Offer, Server
from inventory.selectors import chart_step
from scheduler import statements
from scheduler.allocator import ServerCapacity
from scheduler.models import Allocation, Lease, LeaseEvent


@dataclass(frozen=True)
class Filters:
    """Where a lease may be placed: cards offered for `plan` (interruptibly or not) until `until` by a live offer
    that lets `gpu_count` cards be rented, optionally of one GPU model, region or server."""

    plan: str = ""
    interruptible: bool = False
    until: datetime | None = None
    gpu_count: int | None = None
    gpu_model_id: int | None = None
    region: str = ""
    server_id: int | None = None
    # A lease with a workload needs servers whose agent runs it that way (inventory Runtime); host access also
    # needs an offer that grants it.
    runtime: str = ""
    host_access: bool = False


def cards_with_allocated() -> QuerySet[Gpu]:
    """A server's cards in index order, each annotated `allocated`: held by a lease at this instant. The server
    API passes it to inventory's `with_details` (scheduler/servers_api.py); inventory cannot know of allocations."""
    held = Exists(Allocation.objects.filter(gpu_id=OuterRef("pk"), period__contains=Now()))
    return Gpu.objects.order_by("index").annotate(allocated=held)


def period_range(start: datetime, end: datetime | None) -> DateTimeTZRange:
    """The half-open period [start, end); end None is open-ended."""
    return DateTimeTZRange(start, end, "[)")


def live_offers(*, plan: str, interruptible: bool = False, until: datetime | None = None) -> QuerySet[Offer]:
    """Offers not delisted that price `plan` (interruptibly when asked) and stay available until `until`
    (an open-ended lease needs an offer with no end)."""
    qs = Offer.objects.unscoped(STOREFRONT).direct().open_through(until)
    if plan:
        qs = qs.filter(**{f"{PLAN_PRICE_FIELDS[plan][1 if interruptible else 0]}__isnull": False})
    return qs


def _server_conditions(filters: Filters, prefix: str) -> Q:
    """The server-level conditions of allocatable cards, on the server reached through `prefix` ("server__" from a
    card, "" from the server itself): online, undrained, of an active provider with a live offer for the plan,
    matching `filters`."""
    conditions = Q(
        **{
            f"{prefix}status": Server.Status.ONLINE,
            f"{prefix}drained": False,
            f"{prefix}organization__status": Organization.Status.ACTIVE,
            f"{prefix}organization__kind__in": [Organization.Kind.PROVIDER, Organization.Kind.BOTH],
        }
    )
    if filters.plan:
        offers = live_offers(plan=filters.plan, interruptible=filters.interruptible, until=filters.until)
        if filters.gpu_count is not None:
            offers = offers.filter(min_gpus__lte=filters.gpu_count)
        if filters.host_access:
            offers = offers.filter(host_access=True)
        conditions &= Q(Exists(offers.filter(server_id=OuterRef(f"{prefix}pk"))))
    for wanted, field in (
        (filters.gpu_model_id, "gpu_model_id"),
        (filters.region, "region"),
        (filters.server_id, "pk"),
        (filters.runtime, "runtime"),
    ):
        if wanted:
            conditions &= Q(**{f"{prefix}{field}": wanted})
    return conditions


def allocatable_gpus(
    filters: Filters = Filters(),  # noqa: B008 - frozen dataclass
    *,
    uncleaned_too: bool = False,
) -> QuerySet[Gpu]:
    """Cards that may be allocated at all: not failed, not drained, not waiting for their agent to report them
    clean after a workload (unless `uncleaned_too`: such a card is busy for a while, like a held one, not gone), on
    an online undrained server of an active provider with a live offer for the plan, matching `filters`. Time is
    not considered here (see `free_gpus`)."""
    qs = (
        Gpu.objects.unscoped(STOREFRONT)
        .filter(_server_conditions(filters, "server__"), drained=False)
        .exclude(health=Gpu.Health.FAILED)
    )
    if not uncleaned_too:
        qs = qs.filter(needs_cleaning=False)
    return qs


def overlapping(period: DateTimeTZRange, *, gpu_ref: str = "pk") -> QuerySet[Allocation]:
    """Allocations of the outer query's card that overlap `period` (served by the exclusion constraint's index)."""
    return Allocation.objects.filter(gpu_id=OuterRef(gpu_ref), period__overlap=period)


def busy_gpu_ids(period: DateTimeTZRange) -> QuerySet[Allocation]:
    """Ids of the cards with an allocation overlapping `period`, as one set: PostgreSQL hashes it once per
    statement (`NOT (id = ANY (hashed SubPlan))`), where `overlapping` probes the index once per card; the set
    wins when many cards are asked about at once (every offer of the storefront)."""
    return Allocation.objects.filter(period__overlap=period).values("gpu_id")


def free_gpus(filters: Filters, period: DateTimeTZRange) -> QuerySet[Gpu]:
    """Allocatable cards with no allocation overlapping `period`."""
    return allocatable_gpus(filters).filter(~Exists(overlapping(period)))


def allocatable_servers(filters: Filters = Filters()) -> QuerySet[Server]:  # noqa: B008 - frozen dataclass
    """The servers whose cards `allocatable_gpus(filters)` may return: the same server-level conditions."""
    return Server.objects.unscoped(STOREFRONT).filter(_server_conditions(filters, ""))


def capacity_fresh(at: datetime, prefix: str = "") -> Q:
    """The server's capacity row (scheduler.models.Capacity) answers for instant `at` (or, for `free_onward`, the
    period from `at` on): no allocation of its cards starts or ends between its count and `at`."""
    return Q(**{f"{prefix}capacity__valid_until__gt": at})


def free_capacity(
    filters: Filters,
    period: DateTimeTZRange,
    *,
    held: AbstractSet[int] = frozenset(),
    server_ids: AbstractSet[int] | None = None,
) -> list[ServerCapacity]:
    """Per server (of `server_ids` only, if given): how many of its cards are allocatable and free for the whole
    `period`.

    An open-ended period reads the servers' capacity rows (a lookup per server, not a count of the fleet's cards);
    the few servers whose row is stale for its start, and a bounded period, are counted from the allocation rows.
    A row counted at an instant after the period's start may show cards released since then as free: placement
    claims under lock with the exact condition (scheduler/locks.py), so that only costs it a round."""
    if period.upper is not None or period.lower is None:
        gpus = free_gpus(filters, period)
        if server_ids is not None:
            gpus = gpus.filter(server_id__in=sorted(server_ids))
        return capacity_of(gpus, held=held)
    servers = allocatable_servers(filters)
    if server_ids is not None:
        servers = servers.filter(pk__in=sorted(server_ids))
    fresh = capacity_fresh(period.lower)
    rows = (
        servers.filter(fresh, capacity__free_onward__gt=0)
        .values("pk", "gpu_model_id", "gpu_model__fp16_tflops", "gpu_count", "capacity__free_onward")
        .order_by("pk")
    )
    stale = list(servers.exclude(fresh).values_list("pk", flat=True))
    minimums = offer_minimums(server_ids)
    found = [
        ServerCapacity(
            server_id=row["pk"],
            gpu_model_id=row["gpu_model_id"],
            card_tflops=row["gpu_model__fp16_tflops"],
            gpu_count=row["gpu_count"],
            free=row["capacity__free_onward"],
            min_cards=1 if row["pk"] in held else minimums.get(row["pk"], 1),
        )
        for row in rows
    ]
    if stale:
        found += capacity_of(free_gpus(filters, period).filter(server_id__in=stale), held=held)
        found.sort(key=lambda c: c.server_id)
    return found


def capacity_of(gpus: QuerySet[Gpu], *, held: AbstractSet[int] = frozenset()) -> list[ServerCapacity]:
    """`gpus` counted per server, with the fewest cards a lease may take there: its offer's minimum, except on
    the servers in `held`, where the lease already has cards."""
    rows = (
        gpus.values("server_id", "server__gpu_model_id", "server__gpu_model__fp16_tflops", "server__gpu_count")
        .annotate(free=Count("id"))
        .order_by("server_id")
    )
    keys = ("server_id", "server__gpu_model_id", "server__gpu_model__fp16_tflops", "server__gpu_count", "free")
    return _capacities(rows, keys, held, offer_minimums())


def _capacities(
    rows: Iterable[dict], keys: tuple[str, str, str, str, str], held: AbstractSet[int], minimums: dict[int, int]
) -> list[ServerCapacity]:
    """`ServerCapacity` of each row, its fields read under `keys` (server id, model id, card TFLOPS, card count,
    free cards); a server where the lease already has cards (`held`) takes any number, others their offer's
    minimum."""
    server, model, tflops, count, free = keys
    return [
        ServerCapacity(
            server_id=row[server],
            gpu_model_id=row[model],
            card_tflops=row[tflops],
            gpu_count=row[count],
            free=row[free],
            min_cards=1 if row[server] in held else minimums.get(row[server], 1),
        )
        for row in rows
    ]


def best_fit_capacity(
    filters: Filters, period: DateTimeTZRange, count: int, *, held: AbstractSet[int] = frozenset(), limit: int = 16
) -> list[ServerCapacity] | None:
    """For `count` cards over an open-ended `period`: the servers with at least that many free cards, fewest free
    first (then lowest id), at most `limit` of them, read from the capacity rows along their (free_onward, server)
    index: a lookup, whatever the fleet's size. `allocator.place_cards` picks the same server from these as from
    every server's capacity whenever one of them accepts `count` (the fitting servers are walked in its order).
    None when this cannot answer: a bounded period, or a server of `filters` whose row is stale for the period's
    start (the caller counts with `free_capacity` then); an empty list when no fresh row has that many free.

    One statement: each row carries its offer's minimum and the earliest `valid_until` of the rows of all servers of
    `filters` (the same uncorrelated subquery on every row, evaluated once: the first of them along the rows'
    `valid_until` index; it takes no parameter, so a prepared statement's generic plan walks that index as a custom
    plan does, where `valid_until <= instant` made it read every row). Any of them at or before the instant is stale.
    Prepared, with one generic plan (scheduler/statements.py): PostgreSQL parses and plans it once per connection."""
    if period.upper is not None or period.lower is None or count <= 0:
        return None

    def build(stand_in: Mapping[str, Any]) -> QuerySet:
        servers = allocatable_servers(filters)
        return (
            servers.filter(capacity__free_onward__gte=count, capacity__valid_until__gt=stand_in["at"])
            .annotate(
                first_valid_until=Subquery(
                    servers.filter(capacity__valid_until__isnull=False)
                    .order_by("capacity__valid_until")
                    .values("capacity__valid_until")[:1]
                ),
                offer_min=Subquery(
                    _minimum_offers().filter(server_id=OuterRef("pk")).order_by("-pk").values("min_gpus")[:1]
                ),
            )
            .values(
                "pk",
                "gpu_model_id",
                "gpu_model__fp16_tflops",
                "gpu_count",
                "capacity__free_onward",
                "first_valid_until",
                "offer_min",
            )
            .order_by("capacity__free_onward", "capacity__server_id")[:limit]
        )

    # Built and compiled once per filters, count and limit (scheduler/statements.py): only the instant changes.
    sql, params = statements.compiled(("best_fit", filters, count, limit), build, {"at": period.lower})
    rows = statements.fetch_dicts(sql, params, generic=True)
    if rows and rows[0]["first_valid_until"] <= period.lower:
        return None
    minimums = {row["pk"]: row["offer_min"] for row in rows if row["offer_min"]}
    keys = ("pk", "gpu_model_id", "gpu_model__fp16_tflops", "gpu_count", "capacity__free_onward")
    return _capacities(rows, keys, held, minimums)


def _minimum_offers() -> QuerySet[Offer]:
    """Live offers of the servers' own (not resale offers) that ask for more than one card."""
    return Offer.objects.unscoped(STOREFRONT).direct().live().filter(min_gpus__gt=1)


def offer_minimums(server_ids: Iterable[int] | None = None) -> dict[int, int]:
    """Server id -> the `min_gpus` of its live offer (a server has one), where above 1; of `server_ids` if given."""
    offers = _minimum_offers()
    if server_ids is not None:
        offers = offers.filter(server_id__in=list(server_ids))
    return dict(offers.values_list("server_id", "min_gpus"))


def allocatable_totals(filters: Filters) -> dict:
    """The largest request that could ever be met with `filters`: cards, whole servers, rated PFLOPS. Cards
    waiting to be reported clean count (they come back), so a request for them is a conflict, not bad input."""
    per_server = list(
        allocatable_gpus(filters, uncleaned_too=True)
        .values("server_id", "server__gpu_count")
        .annotate(cards=Count("id"), tflops=Sum("server__gpu_model__fp16_tflops"))
        .order_by()
    )
    return {
        "cards": sum(row["cards"] for row in per_server),
        "servers": sum(1 for row in per_server if row["cards"] == row["server__gpu_count"]),
        "tflops": sum((row["tflops"] for row in per_server), 0),
    }


def leases_for_org(*, org: Organization | None) -> QuerySet[Lease]:
    return scoped(Lease, org).select_related("gpu_model").order_by("-id")


def held_allocations(*, lease: Lease, at: datetime) -> QuerySet[Allocation]:
    """The lease's allocations held at `at` or later (open, or closing after `at`), card order."""
    return (
        lease.allocations.filter(Q(period__endswith__isnull=True) | Q(period__endswith__gt=at))
        .select_related("gpu")
        .order_by("server_id", "gpu__index")
    )


def lease_events(*, lease: Lease) -> QuerySet[LeaseEvent]:
    return lease.events.order_by("id")


def _ceil(moment: datetime, unit: timedelta) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + unit


def _floor(moment: datetime, unit: timedelta) -> datetime:
    # Roll-up buckets are whole UTC minutes and hours (date_trunc on a UTC session).
    return moment - (moment - datetime(2000, 1, 1, tzinfo=UTC)) % unit


BUCKETS = {telemetry.ONE_MINUTE: timedelta(minutes=1), telemetry.ONE_HOUR: timedelta(hours=1)}


def resold_periods(
    allocation_ids: list[int], since: datetime, until: datetime
) -> dict[int, list[tuple[datetime, datetime | None]]]:
    """Allocation id -> the periods (by start) resale leases of another organisation held its card within [since,
    until) (scheduler/resale.py): a contract's time that is a renter's, whose telemetry is the renter's."""
    resold: dict[int, list[tuple[datetime, datetime | None]]] = {}
    resales = Allocation.objects.unscoped("the renters' periods on a contract's cards, to leave them out").filter(
        backing_id__in=allocation_ids, period__overlap=period_range(since, until)
    )
    for backing_id, period in resales.order_by("period__startswith").values_list("backing_id", "period"):
        resold.setdefault(backing_id, []).append((period.lower, period.upper))
    return resold


def own_time(
    start: datetime, end: datetime | None, resold: list[tuple[datetime, datetime | None]]
) -> list[tuple[datetime, datetime | None]]:
    """[start, end) less the periods (sorted by start, inside it) its card was resold."""
    pieces: list[tuple[datetime, datetime | None]] = []
    for lower, upper in resold:
        if lower > start:
            pieces.append((start, lower))
        if upper is None:
            return pieces
        start = max(start, upper)
    if end is None or start < end:
        pieces.append((start, end))
    return pieces


def lease_telemetry(
    *,
    lease: Lease,
    since: datetime | None = None,
    until: datetime | None = None,
    step: int | None = None,
    now: datetime | None = None,
) -> dict:
    """Per-card series of `lease` over [since, until) at `step` seconds (default: the last hour it ran): only the
    cards it held, each only over the time it held it, through inventory.telemetry.series.

    A roll-up bucket (a minute or an hour of averages) is used only when it lies wholly inside the time the lease
    held the card, so a chart never shows a figure of the tenant before or after on the same card.
    """
    now = now or timezone.now()
    until = until or min(now, lease.ended_at or now)
    since = since or until - timedelta(hours=1)
    step = chart_step(since=since, until=until, step=step)
    allocations = (
        lease.allocations.filter(period__overlap=period_range(since, until))
        .select_related("gpu")
        .order_by("server_id", "gpu__index", "id")
    )
    allocations = list(allocations)
    # A contract's card resold to another organisation (scheduler/resale.py) is that renter's for the time: its
    # samples then are the renter's, not the contract's.
    resold = resold_periods([a.pk for a in allocations], since, until)
    cards: dict[int, dict] = {}
    windows: dict[tuple[int, datetime, datetime], list[int]] = {}
    for allocation in allocations:
        gpu = allocation.gpu
        cards.setdefault(gpu.pk, {"uuid": gpu.uuid, "server": allocation.server_id, "index": gpu.index, "points": []})
        for start, end in own_time(allocation.period.lower, allocation.period.upper, resold.get(allocation.pk, [])):
            low, high = max(since, start), min(until, end) if end else until
            bucket = BUCKETS.get(telemetry.choose_source(step, low, now))
            if bucket is not None:
                # Trim to whole buckets at the lease's own edges (the caller's range edges are theirs anyway).
                low = _ceil(low, bucket) if low == start else low
                high = _floor(high, bucket) if high == end else high
            if low < high:
                windows.setdefault((allocation.server_id, low, high), []).append(gpu.pk)
    for (server_id, low, high), gpu_ids in windows.items():
        result = telemetry.series(server_id=server_id, since=low, until=high, step=step, now=now)
        for gpu_id in gpu_ids:
            cards[gpu_id]["points"].extend(result["points"].get(gpu_id, []))
    for card in cards.values():
        card["points"].sort(key=lambda point: point["t"])
    source = telemetry.choose_source(step, since, now)
    return {
        "lease": lease.pk,
        "since": since,
        "until": until,
        "step": step,
        "source": source.removeprefix("inventory_gpusample").lstrip("_") or "raw",
        "gpus": list(cards.values()),
    }
