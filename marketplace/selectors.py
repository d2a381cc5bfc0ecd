"""Reads of the storefront: offer search with free cards now, prices in the renter's currency and reliability."""

from __future__ import annotations

import functools
import sys
from collections import namedtuple
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connections
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import (
    Case,
    Count,
    DecimalField,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, Greatest, Least, Now, NullIf
from django.utils import timezone
from psycopg.types.range import Range

from accounts.databases import read_alias
from accounts.models import Organization
from inventory.access import STOREFRONT
from inventory.models import PLAN_PRICE_FIELDS, GpuModel, Offer, Server, ServerOutage
from marketplace.models import OfferListing
from scheduler.models import LeaseState
from scheduler.pricing import rate_between
from scheduler.resale import free_resale_cards
from scheduler.selectors import Filters, allocatable_gpus, busy_gpu_ids, capacity_fresh, period_range
from workloads.models import Workload

RELIABILITY_WINDOW = timedelta(days=30)
# Offers with no price for the plan compared (or no exchange rate to the asked currency) sort last either way.
ORDERINGS = {
    "price": (F("sort_price").asc(nulls_last=True), "id"),
    "-price": (F("sort_price").desc(nulls_last=True), "id"),
    "gpus_free": ("gpus_free", "id"),
    "-gpus_free": ("-gpus_free", "id"),
    "reliability": ("reliability", "id"),
    "-reliability": ("-reliability", "id"),
    "newest": ("-created_at", "-id"),
}


@dataclass(frozen=True)
class OfferQuery:
    gpu_model: int | None = None
    min_gpus: int | None = None
    region: str = ""
    plan: str = ""
    interruptible: bool = False
    max_price: Decimal | None = None
    interconnect: str = ""
    min_reliability: Decimal | None = None
    ordering: str = "price"
    currency: str = ""  # show (and compare) prices in this currency; empty = each offer's own (no max_price then)
    min_price: Decimal | None = None  # the storefront's floor, in `currency` as max_price


def shown_currency(org: Organization | None, language: str = "", wanted: str = "") -> str:
    """The currency a viewer is shown prices in, and reads `max_price` in: the one asked for, else their
    organisation's, else the language's usual one (CNY for Chinese, USD otherwise). The storefront and the API
    share it, so a ceiling without a currency is never compared across currencies."""
    if wanted:
        return wanted
    if org is not None:
        return org.currency
    return Organization.Currency.CNY if (language or "").startswith("zh") else Organization.Currency.USD


def _epoch(expression) -> Func:
    """Seconds in an interval expression."""
    return Func(expression, template="EXTRACT(EPOCH FROM %(expressions)s)", output_field=FloatField())


def _outage_seconds(since: datetime) -> Subquery:
    """Seconds the offer's server was unreachable since `since` (open outages count until now)."""
    seconds = (
        ServerOutage.objects.filter(server_id=OuterRef("server_id"))
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=since))
        .annotate(
            secs=_epoch(
                ExpressionWrapper(
                    Coalesce(F("ended_at"), Now()) - Greatest(F("started_at"), Value(since)),
                    output_field=DurationField(),
                )
            )
        )
        .values("server_id")
        .annotate(total=Sum("secs"))
        .values("total")
    )
    return Subquery(seconds, output_field=FloatField())


def _start_failures(since: datetime) -> tuple[Subquery, Subquery]:
    """Workloads on the offer's server asked for since `since` that started, and those whose lease failed without
    ever running: a provider whose servers do not deliver what was rented loses reliability."""

    def count(condition: Q) -> Subquery:
        rows = (
            Workload.objects.filter(server_id=OuterRef("server_id"), created_at__gte=since)
            .filter(condition)
            .order_by()
            .values("server_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        return Subquery(rows, output_field=FloatField())

    return count(Q(started_at__isnull=False)), count(Q(started_at__isnull=True, lease__state=LeaseState.FAILED))


def _in_currency(field: str, currency: str) -> Case | F:
    """The price field converted into `currency` (the same rates a lease is priced at)."""
    if not currency:
        return F(field)
    rates = {code: rate_between(code, currency) for code in Organization.Currency}
    # An offer in a currency with no rate configured has no comparable price (NULL: never under max_price).
    whens = [When(currency=code, then=F(field) * Value(rate)) for code, rate in rates.items() if rate]
    return Case(*whens, output_field=DecimalField(max_digits=20, decimal_places=6))


def _reliability_of(started, failed, outage_seconds, server_created_at, now: datetime) -> Greatest:
    """Reliability, 0..1, from its parts (each NULL where there is none): the share of the server's workloads in the
    window that started rather than failed, times the share of the window (or of the time since the server was
    registered) that it was reachable. One formula for the live count and the listing's stored parts, so both give
    the same number."""
    return Greatest(
        Value(0.0),
        (
            1.0
            - Coalesce(failed, Value(0.0))
            / Greatest(Value(1.0), Coalesce(started, Value(0.0)) + Coalesce(failed, Value(0.0)))
        )
        * (
            1.0
            - Coalesce(outage_seconds, Value(0.0))
            / Greatest(
                # A server listed this very second has a history of one second, not of zero (no 0/0).
                Value(1.0),
                Least(
                    Value(RELIABILITY_WINDOW.total_seconds()),
                    _epoch(ExpressionWrapper(Value(now) - server_created_at, output_field=DurationField())),
                ),
            )
        ),
    )


def _reliability(since: datetime, now: datetime, server_created_at=None) -> Greatest:
    """The offer's server's reliability counted live from its workload and outage rows since `since` (the outer
    query has `server_id`)."""
    started, failed = _start_failures(since)
    created = server_created_at if server_created_at is not None else F("server__created_at")
    return _reliability_of(started, failed, _outage_seconds(since), created, now)


def _stored_reliability(since: datetime, now: datetime) -> Greatest:
    """The listing row's reliability from its stored parts (marketplace/listing_sql.py), for an instant the row
    answers for: the same terms as the live count, summed in the same exact numeric arithmetic."""
    # A count of none is NULL, as the live count's subquery gives (the SQL's types are the live count's too).
    counted = lambda name: NullIf(F(name), Value(0), output_field=FloatField())  # noqa: E731
    numeric = DecimalField(max_digits=40, decimal_places=6)
    # The open outage until now, where there is one (GREATEST ignores a NULL: no term at all without one).
    open_seconds = Case(
        When(
            rel_open_since__isnull=False,
            then=_epoch(
                ExpressionWrapper(Now() - Greatest(F("rel_open_since"), Value(since)), output_field=DurationField())
            ),
        ),
        output_field=FloatField(),
    )
    outage = Case(
        When(
            Q(rel_closed__gt=0) | Q(rel_open_since__isnull=False),
            then=ExpressionWrapper(
                F("rel_inside_seconds")
                + ExpressionWrapper(
                    F("rel_straddling_ends")
                    - ExpressionWrapper(F("rel_straddling") * _epoch(Value(since)), output_field=numeric),
                    output_field=numeric,
                )
                + Coalesce(open_seconds, Value(0), output_field=numeric),
                output_field=numeric,
            ),
        ),
        output_field=FloatField(),
    )
    return _reliability_of(counted("rel_started"), counted("rel_failed"), outage, F("server_created_at"), now)


def _free_counts(now: datetime) -> tuple[Subquery, Subquery]:
    """The outer query's server's allocatable cards and, of those, the ones free now, counted from the card and
    allocation rows (the outer query has `server_id`)."""
    gpus = allocatable_gpus(Filters()).filter(server_id=OuterRef("server_id"))
    free = gpus.exclude(id__in=busy_gpu_ids(period_range(now, now + timedelta(seconds=1))))

    def count(qs: QuerySet) -> Subquery:
        return Subquery(
            qs.order_by().values("server_id").annotate(n=Count("id")).values("n"), output_field=IntegerField()
        )

    return Coalesce(count(free), 0), Coalesce(count(gpus), 0)


def _filtered(qs: QuerySet, query: OfferQuery, server: str) -> QuerySet:
    """The search's filters and `sort_price`, on offers annotated with `gpus_free` and `reliability` whose server's
    model, region and interconnect are reached through `server`."""
    if query.gpu_model:
        qs = qs.filter(**{f"{server}gpu_model_id": query.gpu_model})
    if query.region:
        qs = qs.filter(**{f"{server}region": query.region})
    if query.interconnect:
        qs = qs.filter(**{f"{server}interconnect": query.interconnect})
    if query.min_gpus:
        qs = qs.filter(gpus_free__gte=query.min_gpus)
    if query.min_reliability is not None:
        qs = qs.filter(reliability__gte=float(query.min_reliability))
    plan = query.plan or "card_hour"
    price_field = PLAN_PRICE_FIELDS[plan][1 if query.interruptible else 0]
    if query.plan:
        qs = qs.filter(**{f"{price_field}__isnull": False})
    qs = qs.annotate(sort_price=_in_currency(price_field, query.currency))
    if query.max_price is not None or query.min_price is not None:
        if not query.currency:
            # Each offer's own currency would compare 3 CNY with 3 USD: a ceiling is read in one currency.
            raise ValueError("max_price needs the currency it is read in (shown_currency)")
        if query.max_price is not None:
            qs = qs.filter(sort_price__lte=query.max_price)
        if query.min_price is not None:
            qs = qs.filter(sort_price__gte=query.min_price)
    return qs


def offers_recounted(query: OfferQuery = OfferQuery(), *, now: datetime | None = None) -> QuerySet[Offer]:  # noqa: B008
    """The search counted from the source rows every time: each live offer joined to its server, organisations and
    capacity row, its server's reliability counted from its workloads and outages. What `offers_listed` answers
    from the listing, and the reference it is tested against; it reads the whole fleet, so nothing serves it."""
    now = now or timezone.now()
    since = now - RELIABILITY_WINDOW
    free, ok = _free_counts(now)
    provider_ok = Q(
        server__organization__status=Organization.Status.ACTIVE,
        server__organization__kind__in=[Organization.Kind.PROVIDER, Organization.Kind.BOTH],
    )
    qs = (
        Offer.objects.unscoped(STOREFRONT)
        .open_at(now)
        .filter(
            server__status="online",
            server__drained=False,
            organization__status=Organization.Status.ACTIVE,
        )
        .select_related("server", "server__gpu_model", "organization")
        .annotate(
            # The server's capacity row (scheduler.models.Capacity, kept by triggers with the allocations) where it
            # answers for now; counted from the card and allocation rows where it does not.
            gpus_free=Case(
                # A resale offer's free cards are its contract's, not the server's (scheduler/resale.py).
                When(is_resale=True, then=Coalesce(free_resale_cards(now), 0)),
                When(provider_ok & capacity_fresh(now, "server__"), then=F("server__capacity__free_now")),
                default=free,
            ),
            gpus_ok=Case(
                When(provider_ok & Q(server__capacity__isnull=False), then=F("server__capacity__ok_cards")),
                default=ok,
            ),
            reliability=_reliability(since, now),
        )
    )
    return _filtered(qs, query, "server__").order_by(*ORDERINGS.get(query.ordering, ORDERINGS["price"]))


# ORDERINGS on the listing: the offer's id and creation time are its columns there.
LISTING_ORDERINGS = {
    name: tuple(
        {"id": "offer_id", "-id": "-offer_id", "-created_at": "-offer_created_at"}.get(key, key)
        if isinstance(key, str)
        else key
        for key in keys
    )
    for name, keys in ORDERINGS.items()
}
ANNOTATIONS = ("gpus_free", "gpus_ok", "reliability", "sort_price")


def listing_rows(query: OfferQuery = OfferQuery(), *, now: datetime | None = None) -> QuerySet[OfferListing]:  # noqa: B008
    """The listing rows (marketplace.models.OfferListing) a search matches, in its order, annotated as
    `offers_recounted` annotates offers: one narrow table, no join. Free cards and reliability are the row's own
    where it answers for `now` (its capacity copy and its reliability parts are current), else counted live from the
    source rows as `offers_recounted` counts them, for that row alone."""
    now = now or timezone.now()
    since = now - RELIABILITY_WINDOW
    free, ok = _free_counts(now)
    rows = OfferListing.objects.filter(
        Q(available_until__isnull=True) | Q(available_until__gt=now),
        server_online=True,
        server_drained=False,
        offer_org_active=True,
    ).annotate(
        gpus_free=Case(
            # A resale offer's row (free_from_capacity false): its contract's free cards (scheduler/resale.py).
            When(free_from_capacity=False, then=Coalesce(free_resale_cards(now, "offer_id"), 0)),
            When(provider_ok=True, free_valid_until__gt=now, then=F("free_now")),
            default=free,
        ),
        gpus_ok=Case(When(provider_ok=True, ok_cards__isnull=False, then=F("ok_cards")), default=ok),
        reliability=Case(
            When(
                rel_fixed__isnull=False,
                rel_as_of__lte=now,
                rel_valid_until__gt=now,
                then=ExpressionWrapper(F("rel_fixed"), output_field=FloatField()),
            ),
            When(rel_as_of__lte=now, rel_valid_until__gt=now, then=_stored_reliability(since, now)),
            default=_reliability(since, now, F("server_created_at")),
        ),
    )
    return _filtered(rows, query, "").order_by(*LISTING_ORDERINGS.get(query.ordering, LISTING_ORDERINGS["price"]))


# A search's statements are compiled once per shape (which filters, plan, ordering, currency, the exchange rates) with
# stand-ins for the values that vary, then run with each search's own values put where the stand-ins were: compiling
# the ORM's expressions (the live-count fallbacks are large) costs more than running them.
_NOW = datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
_STAND_INS = {
    "gpu_model": 987_654_301,
    "min_gpus": 987_654_302,
    "min_reliability": Decimal(-987_654_303),
    "max_price": Decimal(-987_654_304),
    "min_price": Decimal(-987_654_305),
    "region": "\x00region",
    "interconnect": "\x00interconnect",
    "offer_id": 987_654_306,
}
_ROW_FIELDS = ("offer_id", *ANNOTATIONS)


# What an answer of the API (marketplace/offer_json.py) and a result card of the search page (marketplace.views_offers
# .ResultCard) show of a listed offer besides its figures, read in the statement that selects the page
# (`ListedOffers(rows=True)`): name -> (model, field) of the offer `o`, its server `s`, the server's model `m` and the
# offer's organisation `g`.
_SHOWN_FROM = {
    "server": (Offer, "server"),
    "is_resale": (Offer, "is_resale"),
    "gpu_model": (Server, "gpu_model"),
    "gpu_model_name": (GpuModel, "name"),
    "gpus_total": (Server, "gpu_count"),
    "region": (Server, "region"),
    "interconnect": (Server, "interconnect"),
    "provider": (Organization, "name"),
    # The card's alone: the model's memory, and its interconnect where the server names none.
    "gpu_memory_gb": (GpuModel, "memory_gb"),
    "gpu_model_interconnect": (GpuModel, "interconnect"),
    **{
        name: (Offer, name)
        for name in (
            "currency",
            *(field for pair in PLAN_PRICE_FIELDS.values() for field in pair),
            "min_gpus",
            "available_until",
            "host_access",
            "storage_gb_month_price",
            "data_access_hour_price",
            "created_at",
            "delisted_at",
        )
    },
}
_ALIASES = {Offer: "o", Server: "s", GpuModel: "m", Organization: "g"}
# A listed offer as `ListedOffers(rows=True)` gives it: its figures as `offers_listed` annotates an offer, then what
# the API shows of it (`_SHOWN_FROM`); plain values, no model instances.
ListedOffer = namedtuple("ListedOffer", ["id", *ANNOTATIONS, *_SHOWN_FROM])


@dataclass(frozen=True)
class _Compiled:
    count_sql: str
    page_sql: str  # ordered, without LIMIT / OFFSET
    # Per parameter: the name of the value it stands in for (`_STAND_INS`, "now", "since", "period"), or ("value", x)
    # for a constant of the shape (a rate, a literal).
    count_params: tuple
    page_params: tuple
    # The page's figures with the count of all matches beside each (COUNT(*) OVER ()), LIMIT %s OFFSET %s at the
    # end: the count and a page in one statement (`ListedOffers.expect`); `shown_sql` is the same statement joined
    # to the page's offers, servers, models and organisations for what the API shows (`_SHOWN_FROM`).
    window_sql: str
    shown_sql: str
    window_params: tuple


def _outer_ordering(ordering: str) -> str:
    """The search's ORDER BY (LISTING_ORDERINGS) over the columns of the page's subquery `page`: the same total
    order (the offer id breaks ties), so the joined page keeps the order its figures were selected in."""
    out = []
    for key in LISTING_ORDERINGS.get(ordering, LISTING_ORDERINGS["price"]):
        if isinstance(key, str):
            name, descending, nulls = key.lstrip("-"), key.startswith("-"), ""
        else:  # F(...).asc() / .desc() with its NULLS placement
            name, descending = key.expression.name, key.descending
            nulls = " NULLS LAST" if key.nulls_last else " NULLS FIRST" if key.nulls_first else ""
        out.append(f'page."{name}" {"DESC" if descending else "ASC"}{nulls}')
    return ", ".join(out)


def _shown_sql(window_sql: str, ordering: str) -> str:
    """`window_sql` (with its LIMIT and OFFSET) as a subquery, joined to what the API shows of each offer."""
    columns = ", ".join(
        f'{_ALIASES[model]}."{model._meta.get_field(field).column}" AS "{name}"'
        for name, (model, field) in _SHOWN_FROM.items()
    )
    offer, server = Offer._meta, Server._meta
    return (
        f'SELECT page."offer_id", {", ".join(f"page.{name}" for name in ANNOTATIONS)}, page."total", {columns} '  # noqa: S608 - names from the models, values as parameters
        f"FROM ({window_sql}) AS page "
        f'JOIN "{offer.db_table}" o ON o."id" = page."offer_id" '
        f'JOIN "{server.db_table}" s ON s."id" = o."{offer.get_field("server").column}" '
        f'JOIN "{GpuModel._meta.db_table}" m ON m."id" = s."{server.get_field("gpu_model").column}" '
        f'JOIN "{Organization._meta.db_table}" g ON g."id" = o."{offer.get_field("organization").column}" '
        f"ORDER BY {_outer_ordering(ordering)}"
    )


def _time_stand_ins(now: datetime) -> dict:
    return {
        "now": now,
        "since": now - RELIABILITY_WINDOW,
        "period": period_range(now, now + timedelta(seconds=1)),
    }


def _shape(query: OfferQuery, offer_id: int | None) -> tuple:
    """What decides a search's statements: the filters given (as `_filtered` tests them), plan, ordering, currency."""
    given = {"min_reliability", "max_price", "min_price"}  # filtered when not None (0 is a bound); others when set
    present = tuple(
        name
        for name in _STAND_INS
        if (
            offer_id is not None
            if name == "offer_id"
            else (getattr(query, name) is not None if name in given else bool(getattr(query, name)))
        )
    )
    return (present, query.plan, query.interruptible, query.ordering, query.currency)


@functools.lru_cache(maxsize=512)
def _compile(shape: tuple, rates: tuple, alias: str) -> _Compiled:
    present, plan, interruptible, ordering, currency = shape
    stand_in = OfferQuery(
        plan=plan,
        interruptible=interruptible,
        ordering=ordering,
        currency=currency,
        **{name: _STAND_INS[name] for name in present if name != "offer_id"},
    )
    rows = listing_rows(stand_in, now=_NOW)
    if "offer_id" in present:
        rows = rows.filter(offer_id=_STAND_INS["offer_id"])
    inner, count_params = rows.order_by().values("offer_id").query.get_compiler(alias).as_sql()
    page_sql, page_params = rows.values_list(*_ROW_FIELDS).query.get_compiler(alias).as_sql()
    window = rows.annotate(total=Window(Count("*"))).values_list(*_ROW_FIELDS, "offer_created_at", "total")
    window_sql, window_params = window.query.get_compiler(alias).as_sql()
    window_sql += " LIMIT %s OFFSET %s"
    markers = {**_time_stand_ins(_NOW), **{name: _STAND_INS[name] for name in present}}
    if "min_reliability" in present:
        markers["min_reliability"] = float(_STAND_INS["min_reliability"])

    def same(marker, value) -> bool:
        if isinstance(marker, DateTimeTZRange):
            return isinstance(value, Range) and (value.lower, value.upper) == (marker.lower, marker.upper)
        if isinstance(marker, int):
            return isinstance(value, int) and not isinstance(value, bool) and value == marker
        return isinstance(value, type(marker)) and value == marker

    def mark(params: tuple) -> tuple:
        out = []
        for value in params:
            name = next((n for n, m in markers.items() if same(m, value)), None)
            out.append(("value", value) if name is None else (name, type(value)))
        return tuple(out)

    counted, paged, windowed = mark(count_params), mark(page_params), mark(window_params)
    for marked in (counted + paged, windowed):
        missing = set(markers) - {"now", "since", "period"} - {m[0] for m in marked}
        if missing:  # a value the statements do not carry as a parameter: this shape cannot be reused
            raise RuntimeError(f"offer search: stand-ins not found in the compiled statement: {sorted(missing)}")
    count_sql = "SELECT COUNT(*) FROM (" + inner + ") AS listed"  # noqa: S608 - the ORM's SQL, values as parameters
    shown_sql = _shown_sql(window_sql, ordering)
    return _Compiled(count_sql, page_sql, counted, paged, window_sql, shown_sql, windowed)


class _PreparedCursor(ServerBindingCursor):
    """Binds on the server and prepares what it runs: PostgreSQL plans a search's statement once per shape and
    connection, not on every request (planning the listing's statements, with their live-count fallbacks, costs more
    than running them: ~5 ms of ~8 for one model in one region at 12,500 servers; after its fifth run PostgreSQL keeps
    a generic plan where that is no worse than the custom ones). The compiled statements are few and always the same
    text (values as parameters)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):  # type: ignore[no-untyped-def, override]
        return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)


class _RecordedAsText(CursorDebugWrapper):
    """Django's debug cursor for `_PreparedCursor`: it records each statement with its values written in (the text a
    client-bound cursor sends, as Django's own cursors record theirs), where Django's record of a prepared statement
    would be empty; what tests and bench/search.py read from CaptureQueriesContext."""

    def execute(self, sql, params=None):  # type: ignore[no-untyped-def, override]
        with self.debug_sql(self.db.ops.compose_sql(sql, params)):
            return CursorWrapper.execute(self, sql, params)


def _prepared_cursor(alias: str):
    """A preparing cursor on the alias's connection, in Django's wrapper (its error mapping, execute wrappers and,
    where queries are recorded, the debug cursor's record). Django turns psycopg's own preparing off (for poolers in
    transaction mode): this prepares only what runs through it, as scheduler/statements.py and inventory/ingest.py do;
    a pooler in front of PostgreSQL runs in session mode or tracks prepared statements (PgBouncer 1.21+)."""
    connection = connections[alias]
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = sys.maxsize  # only what asks for it (prepare=True) is prepared
    cursor = _PreparedCursor(raw)
    return _RecordedAsText(cursor, connection) if connection.queries_logged else connection.make_cursor(cursor)


class ListedOffers:
    """A search's results as Django's Paginator and DRF's pagination take them: `count()` (one count over the
    listing) and slices, each one statement over the listing for the slice's offer ids and their figures, then one
    lookup of those offers with their servers, models and organisations. An offer carries `gpus_free`, `gpus_ok`,
    `reliability` and `sort_price` as the queryset of `offers_recounted` annotates them (`listing_rows` is the
    same search as a queryset; its statements are compiled once per shape, `_compile`).

    `expect(start, stop)` says which slice the caller will ask for after `count()` (a paginator counts, then
    slices): the count and that slice are then read in one statement. With `rows=True` slices give `ListedOffer`
    tuples (the figures and what the API and the search page's cards show of each offer, read in the statement that
    selects the slice, joined to the offers, servers, models and organisations) instead of Offer instances."""

    ordered = True

    def __init__(
        self,
        query: OfferQuery,
        *,
        now: datetime | None = None,
        alias: str = "default",
        offer_id=None,
        rows: bool = False,
    ):
        self.query = query
        self.now = now or timezone.now()
        self.alias = alias
        self.offer_id = offer_id
        self.rows = rows
        self._count: int | None = None
        self._expected: tuple[int, int | None] | None = None
        # The slice read with the count: its start, how many rows the statement gave and the items made of them.
        self._window: tuple[int, int, list] | None = None
        rates = tuple(sorted((f"{a}:{b}", str(r)) for (a, b), r in settings.SUANLI_FX_RATES.items()))
        self._compiled = _compile(_shape(query, offer_id), rates, alias)
        if query.max_price is not None and not query.currency:
            raise ValueError("max_price needs the currency it is read in (shown_currency)")

    def _params(self, marked: tuple) -> list:
        values = _time_stand_ins(self.now)
        query = self.query
        for name in _STAND_INS:
            values[name] = self.offer_id if name == "offer_id" else getattr(query, name)
        if query.min_reliability is not None:
            values["min_reliability"] = float(query.min_reliability)
        out = []
        for name, kind in marked:
            if name == "value":
                out.append(kind)
                continue
            value = values[name]
            if issubclass(kind, Range):  # the adapter's range type, as the compiler sent the stand-in
                value = kind(value.lower, value.upper, value.bounds)
            elif kind is not type(value):  # the adapter's int types (Int4...), as the compiler sent the stand-in
                value = kind(value)
            out.append(value)
        return out

    def expect(self, start: int, stop: int | None) -> None:
        """The slice [start:stop] will be asked for after `count()`: read both in one statement (a slice of it, as
        a paginator cuts the last page short, is answered from that read too)."""
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError("ListedOffers.expect takes a non-empty slice with non-negative bounds")
        self._expected = (start, stop)

    def count(self) -> int:
        if self._count is None and self._expected is not None and self._window is None:
            start, stop = self._expected
            total, read, items = self._read(start, stop, counted=True)
            self._window = (start, read, items)
            if total is not None:
                self._count = total
            elif start == 0:  # nothing matches at all
                self._count = 0
        if self._count is None:
            with _prepared_cursor(self.alias) as cursor:
                cursor.execute(self._compiled.count_sql, self._params(self._compiled.count_params))
                self._count = cursor.fetchone()[0]
        return self._count

    def __len__(self) -> int:
        return self.count()

    def _read(self, start: int, stop: int | None, *, counted: bool) -> tuple[int | None, int, list]:
        """The slice's items, with the count of all matches where `counted` (None where the slice is empty) and
        how many rows the statement gave (an offer delisted between two reads is left out of the items)."""
        limit = None if stop is None else stop - start
        compiled = self._compiled
        if self.rows:
            sql, params = compiled.shown_sql, [*self._params(compiled.window_params), limit, start]
        elif counted:
            sql, params = compiled.window_sql, [*self._params(compiled.window_params), limit, start]
        else:
            sql, params = compiled.page_sql, self._params(compiled.page_params)
            if stop is not None:
                sql, params = f"{sql} LIMIT %s", [*params, limit]
            if start:
                sql, params = f"{sql} OFFSET %s", [*params, start]
        with _prepared_cursor(self.alias) as cursor:
            cursor.execute(sql, params)
            found = cursor.fetchall()
            names = [column.name for column in cursor.description]
        width = len(ANNOTATIONS) + 1
        if self.rows:
            # As the ORM converts these annotations (FloatField: float).
            items = [
                ListedOffer(*row[:3], None if row[3] is None else float(row[3]), row[4], *row[width + 1 :])
                for row in found
            ]
            return (found[0][width] if found else None), len(found), items
        if counted:  # the ORM puts the fields first, then the annotations: the figures as `_ROW_FIELDS` names them
            at = [names.index(name) for name in (*_ROW_FIELDS, "total")]
            found = [tuple(row[i] for i in at) for row in found]
        total = found[0][width] if counted and found else None
        offers = (
            Offer.objects.unscoped(STOREFRONT)
            .using(self.alias)
            .select_related("server", "server__gpu_model", "organization")
            .in_bulk([row[0] for row in found])
        )
        items = []
        for offer_id, gpus_free, gpus_ok, reliability, sort_price, *_total in found:
            offer = offers.get(offer_id)
            if offer is None:  # delisted between the two reads (the listing row went with it)
                continue
            # As the ORM converts these annotations (FloatField: float).
            offer.gpus_free, offer.gpus_ok, offer.sort_price = gpus_free, gpus_ok, sort_price
            offer.reliability = None if reliability is None else float(reliability)
            items.append(offer)
        return total, len(found), items

    def __getitem__(self, key: slice | int) -> list[Offer] | Offer:
        if isinstance(key, int):
            found = self[key : key + 1]
            if not found:
                raise IndexError(key)
            return found[0]
        start, stop = key.start or 0, key.stop
        if key.step not in (None, 1) or start < 0 or (stop is not None and stop < 0):
            raise ValueError("ListedOffers takes slices with non-negative bounds")
        if stop is not None and stop <= start:
            return []
        if self._window is not None:
            first, read, items = self._window
            wanted = self._expected[1]
            # The read slice answers where it holds [start, stop): inside it, or it reached the last match.
            reached_end = wanted is None or read < wanted - first
            if start == first and (stop is not None and stop <= first + read or reached_end) and read == len(items):
                return items[: None if stop is None else stop - first]
        total, _, items = self._read(start, stop, counted=self.rows)
        if total is not None and self._count is None:
            self._count = total
        return items

    def __iter__(self):
        return iter(self[:])

    def first(self) -> Offer | None:
        found = self[:1]
        return found[0] if found else None


def offers_listed(
    query: OfferQuery = OfferQuery(),  # noqa: B008
    *,
    now: datetime | None = None,
    rows: bool = False,
) -> ListedOffers:
    """Live offers of approved providers on online servers, with `gpus_free` (allocatable, free now),
    `reliability` (share of the last 30 days the server was reachable, times the share of its workloads in that
    time that started rather than failed, 0..1) and `sort_price`: read from the listing (`listing_rows`), the same
    offers in the same order as `offers_recounted`. With `rows`, as `ListedOffer` tuples (what the API shows)."""
    # The read replica when there is one (accounts/databases.py): a search may lag the primary by the replication
    # delay; renting re-checks every card under lock on the primary.
    return ListedOffers(query, now=now, alias=read_alias(), rows=rows)


def offer_listed(offer_id: int, *, currency: str = "", now: datetime | None = None) -> Offer | None:
    """One listed offer (live, on an online server of an approved provider) with its free cards and reliability,
    or None."""
    return ListedOffers(OfferQuery(currency=currency), now=now, offer_id=offer_id).first()


def listed_regions() -> list[str]:
    """The regions of live offers on online servers, sorted: the search form's choices (from the listing)."""
    rows = OfferListing.objects.using(read_alias()).filter(server_online=True)
    return list(rows.order_by("region").values_list("region", flat=True).distinct())


def offers_of(org: Organization) -> QuerySet[Offer]:
    return Offer.objects.for_org(org).select_related("server", "server__gpu_model").order_by("-id")
