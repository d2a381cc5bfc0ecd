"""Reads of the storefront: offer search with free cards now, prices in the renter's currency and reliability."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

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

from accounts.databases import read_alias
from accounts.models import Organization
from inventory.access import STOREFRONT
from inventory.models import PLAN_PRICE_FIELDS, Offer, ServerOutage
from marketplace.models import OfferListing
from scheduler.models import LeaseState
from scheduler.pricing import rate_between
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
    counted = lambda name: NullIf(F(name), Value(0))  # noqa: E731 - a count of none is NULL, as a subquery's
    numeric = DecimalField(max_digits=40, decimal_places=6)
    open_seconds = _epoch(
        ExpressionWrapper(Now() - Greatest(F("rel_open_since"), Value(since)), output_field=DurationField())
    )
    outage = Case(
        When(
            Q(rel_closed__gt=0) | Q(rel_open_since__isnull=False),
            then=ExpressionWrapper(
                F("rel_inside_seconds")
                + (F("rel_straddling_ends") - F("rel_straddling") * _epoch(Value(since)))
                + Coalesce(open_seconds, Value(0), output_field=numeric),
                output_field=numeric,
            ),
        ),
        output_field=numeric,
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
        gpus_free=Case(When(provider_ok=True, free_valid_until__gt=now, then=F("free_now")), default=free),
        gpus_ok=Case(When(provider_ok=True, ok_cards__isnull=False, then=F("ok_cards")), default=ok),
        reliability=Case(
            When(rel_as_of__lte=now, rel_valid_until__gt=now, then=_stored_reliability(since, now)),
            default=_reliability(since, now, F("server_created_at")),
        ),
    )
    return _filtered(rows, query, "").order_by(*LISTING_ORDERINGS.get(query.ordering, LISTING_ORDERINGS["price"]))


class ListedOffers:
    """A search's results as Django's Paginator and DRF's pagination take them: `count()` (one count over the
    listing) and slices, each one statement over the listing for the slice's offer ids and their figures, then one
    lookup of those offers with their servers, models and organisations. An offer carries `gpus_free`, `gpus_ok`,
    `reliability` and `sort_price` as the queryset of `offers_recounted` annotates them."""

    ordered = True

    def __init__(self, rows: QuerySet[OfferListing]):
        self.rows = rows
        self._count: int | None = None

    def count(self) -> int:
        if self._count is None:
            self._count = self.rows.count()
        return self._count

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, key: slice | int) -> list[Offer] | Offer:
        if isinstance(key, int):
            found = self[key : key + 1]
            if not found:
                raise IndexError(key)
            return found[0]
        figures = list(self.rows.values_list("offer_id", *ANNOTATIONS)[key])
        offers = (
            Offer.objects.unscoped(STOREFRONT)
            .using(self.rows.db)
            .select_related("server", "server__gpu_model", "organization")
            .in_bulk([row[0] for row in figures])
        )
        out = []
        for offer_id, *values in figures:
            offer = offers.get(offer_id)
            if offer is None:  # delisted between the two reads (the listing row went with it)
                continue
            for name, value in zip(ANNOTATIONS, values, strict=True):
                setattr(offer, name, value)
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
    return ListedOffers(listing_rows(query, now=now).using(read_alias()))


def offer_listed(offer_id: int, *, currency: str = "", now: datetime | None = None) -> Offer | None:
    """One listed offer (live, on an online server of an approved provider) with its free cards and reliability,
    or None."""
    return ListedOffers(listing_rows(OfferQuery(currency=currency), now=now).filter(offer_id=offer_id)).first()


def listed_regions() -> list[str]:
    """The regions of live offers on online servers, sorted: the search form's choices (from the listing)."""
    rows = OfferListing.objects.using(read_alias()).filter(server_online=True)
    return list(rows.order_by("region").values_list("region", flat=True).distinct())


def offers_of(org: Organization) -> QuerySet[Offer]:
    return Offer.objects.for_org(org).select_related("server", "server__gpu_model").order_by("-id")
