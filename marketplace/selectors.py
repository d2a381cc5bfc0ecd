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
from django.db.models.functions import Coalesce, Greatest, Least, Now
from django.utils import timezone

from accounts.databases import read_alias
from accounts.models import Organization
from inventory.access import STOREFRONT
from inventory.models import PLAN_PRICE_FIELDS, Offer, ServerOutage
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


def _reliability(since: datetime, now: datetime) -> Greatest:
    """The offer's server's reliability, 0..1: the share of its workloads since `since` that started rather than
    failed, times the share of the time since `since` (or since it was registered) that it was reachable."""
    started, failed = _start_failures(since)
    return Greatest(
        Value(0.0),
        (
            1.0
            - Coalesce(failed, Value(0.0))
            / Greatest(Value(1.0), Coalesce(started, Value(0.0)) + Coalesce(failed, Value(0.0)))
        )
        * (
            1.0
            - Coalesce(_outage_seconds(since), Value(0.0))
            / Greatest(
                # A server listed this very second has a history of one second, not of zero (no 0/0).
                Value(1.0),
                Least(
                    Value(RELIABILITY_WINDOW.total_seconds()),
                    _epoch(ExpressionWrapper(Value(now) - F("server__created_at"), output_field=DurationField())),
                ),
            )
        ),
    )


def offers_listed(query: OfferQuery = OfferQuery(), *, now: datetime | None = None) -> QuerySet[Offer]:  # noqa: B008
    """Live offers of approved providers on online servers, with `gpus_free` (allocatable, free now),
    `reliability` (share of the last 30 days the server was reachable, times the share of its workloads in that
    time that started rather than failed, 0..1) and `sort_price`."""
    now = now or timezone.now()
    since = now - RELIABILITY_WINDOW
    gpus = allocatable_gpus(Filters()).filter(server_id=OuterRef("server_id"))
    free = gpus.exclude(id__in=busy_gpu_ids(period_range(now, now + timedelta(seconds=1))))
    provider_ok = Q(
        server__organization__status=Organization.Status.ACTIVE,
        server__organization__kind__in=[Organization.Kind.PROVIDER, Organization.Kind.BOTH],
    )
    count = lambda qs: Subquery(  # noqa: E731
        qs.order_by().values("server_id").annotate(n=Count("id")).values("n"), output_field=IntegerField()
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
                default=Coalesce(count(free), 0),
            ),
            gpus_ok=Case(
                When(provider_ok & Q(server__capacity__isnull=False), then=F("server__capacity__ok_cards")),
                default=Coalesce(count(gpus), 0),
            ),
            reliability=_reliability(since, now),
        )
    )
    if query.gpu_model:
        qs = qs.filter(server__gpu_model_id=query.gpu_model)
    if query.region:
        qs = qs.filter(server__region=query.region)
    if query.interconnect:
        qs = qs.filter(server__interconnect=query.interconnect)
    if query.min_gpus:
        qs = qs.filter(gpus_free__gte=query.min_gpus)
    if query.min_reliability is not None:
        qs = qs.filter(reliability__gte=float(query.min_reliability))
    plan = query.plan or "card_hour"
    price_field = PLAN_PRICE_FIELDS[plan][1 if query.interruptible else 0]
    if query.plan:
        qs = qs.filter(**{f"{price_field}__isnull": False})
    qs = qs.annotate(sort_price=_in_currency(price_field, query.currency))
    if query.max_price is not None:
        if not query.currency:
            # Each offer's own currency would compare 3 CNY with 3 USD: a ceiling is read in one currency.
            raise ValueError("max_price needs the currency it is read in (shown_currency)")
        qs = qs.filter(sort_price__lte=query.max_price)
    # The read replica when there is one (accounts/databases.py): a search may lag the primary by the replication
    # delay; renting re-checks every card under lock on the primary.
    return qs.order_by(*ORDERINGS.get(query.ordering, ORDERINGS["price"])).using(read_alias())


def offers_of(org: Organization) -> QuerySet[Offer]:
    return Offer.objects.for_org(org).select_related("server", "server__gpu_model").order_by("-id")
