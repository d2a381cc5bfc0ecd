"""Reads of the storefront: offer search with free cards now, prices in the renter's currency and reliability."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connections
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
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
)
from django.db.models.functions import Coalesce, Greatest, Least, Now, NullIf
from django.utils import timezone
from psycopg.types.range import Range

from accounts.databases import read_alias
from accounts.models import Organization
from inventory.access import STOREFRONT
from inventory.models import PLAN_PRICE_FIELDS, Offer, ServerOutage
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


@dataclass(frozen=True)
class _Compiled:
    count_sql: str
    page_sql: str  # ordered, without LIMIT / OFFSET
    # Per parameter: the name of the value it stands in for (`_STAND_INS`, "now", "since", "period"), or ("value", x)
    # for a constant of the shape (a rate, a literal).
    count_params: tuple
    page_params: tuple


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

    counted, paged = mark(count_params), mark(page_params)
    missing = set(markers) - {"now", "since", "period"} - {m[0] for m in counted + paged}
    if missing:  # a value the statements do not carry as a parameter: this shape cannot be reused
        raise RuntimeError(f"offer search: stand-ins not found in the compiled statement: {sorted(missing)}")
    count_sql = "SELECT COUNT(*) FROM (" + inner + ") AS listed"  # noqa: S608 - the ORM's SQL, values as parameters
    return _Compiled(count_sql, page_sql, counted, paged)


class ListedOffers:
    """A search's results as Django's Paginator and DRF's pagination take them: `count()` (one count over the
    listing) and slices, each one statement over the listing for the slice's offer ids and their figures, then one
    lookup of those offers with their servers, models and organisations. An offer carries `gpus_free`, `gpus_ok`,
    `reliability` and `sort_price` as the queryset of `offers_recounted` annotates them (`listing_rows` is the
    same search as a queryset; its statements are compiled once per shape, `_compile`)."""

    ordered = True

    def __init__(self, query: OfferQuery, *, now: datetime | None = None, alias: str = "default", offer_id=None):
        self.query = query
        self.now = now or timezone.now()
        self.alias = alias
        self.offer_id = offer_id
        self._count: int | None = None
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

    def count(self) -> int:
        if self._count is None:
            with connections[self.alias].cursor() as cursor:
                cursor.execute(self._compiled.count_sql, self._params(self._compiled.count_params))
                self._count = cursor.fetchone()[0]
        return self._count

    def __len__(self) -> int:
        return self.count()

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
        sql, params = self._compiled.page_sql, self._params(self._compiled.page_params)
        if stop is not None:
            sql, params = f"{sql} LIMIT %s", [*params, stop - start]
        if start:
            sql, params = f"{sql} OFFSET %s", [*params, start]
        with connections[self.alias].cursor() as cursor:
            cursor.execute(sql, params)
            figures = cursor.fetchall()
        offers = (
            Offer.objects.unscoped(STOREFRONT)
            .using(self.alias)
            .select_related("server", "server__gpu_model", "organization")
            .in_bulk([row[0] for row in figures])
        )
        out = []
        for offer_id, gpus_free, gpus_ok, reliability, sort_price in figures:
            offer = offers.get(offer_id)
            if offer is None:  # delisted between the two reads (the listing row went with it)
                continue
            # As the ORM converts these annotations (FloatField: float).
            offer.gpus_free, offer.gpus_ok, offer.sort_price = gpus_free, gpus_ok, sort_price
            offer.reliability = None if reliability is None else float(reliability)
            out.append(offer)
        return out

    def __iter__(self):
        return iter(self[:])

    def first(self) -> Offer | None:
        found = self[:1]
        return found[0] if found else None


def offers_listed(query: OfferQuery = OfferQuery(), *, now: datetime | None = None) -> ListedOffers:  # noqa: B008
    """Live offers of approved providers on online servers, with `gpus_free` (allocatable, free now),
    `reliability` (share of the last 30 days the server was reachable, times the share of its workloads in that
    time that started rather than failed, 0..1) and `sort_price`: read from the listing (`listing_rows`), the same
    offers in the same order as `offers_recounted`."""
    # The read replica when there is one (accounts/databases.py): a search may lag the primary by the replication
    # delay; renting re-checks every card under lock on the primary.
    return ListedOffers(query, now=now, alias=read_alias())


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
