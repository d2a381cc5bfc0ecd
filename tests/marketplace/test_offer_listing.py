"""Offer search reads one narrow row per live offer (marketplace.models.OfferListing, kept by database triggers): on
a seeded random fleet, and after each of a random series of changes to what it copies, `offers_listed` answers every
search exactly as `offers_recounted` (the same search counted from the source rows) does: the same offers, order,
counts, free cards, reliability and prices; also for an instant when the stored parts no longer answer."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import Organization
from inventory.models import Gpu, Offer, Server, ServerOutage
from marketplace import listing_sql, selectors
from marketplace.listing import listings_refresh
from marketplace.models import OfferListing
from marketplace.selectors import RELIABILITY_WINDOW, OfferQuery, offers_listed, offers_recounted
from scheduler.models import Lease, LeaseState
from tests.factories import (
    AllocationFactory,
    GpuModelFactory,
    LeaseFactory,
    OrganizationFactory,
    ProviderFactory,
    online_server,
)
from workloads.models import Workload

pytestmark = pytest.mark.django_db

REGIONS = ["cn-east-1", "cn-north-1", "ap-southeast-1"]


def searches(models: list[int]) -> list[OfferQuery]:
    """Every ordering, each filter alone and some together, in both currencies and in each offer's own."""
    out = []
    for ordering in selectors.ORDERINGS:
        for currency in ("", "USD", "CNY"):
            out.append(OfferQuery(ordering=ordering, currency=currency))
        out.append(OfferQuery(ordering=ordering, currency="CNY", plan="card_hour", min_gpus=2))
        out.append(OfferQuery(ordering=ordering, currency="USD", min_reliability=Decimal("0.9")))
    for plan in ("card_hour", "server_month", "pflops_year"):
        out.append(OfferQuery(plan=plan, interruptible=True, currency="USD"))
        out.append(OfferQuery(plan=plan, currency="CNY", max_price=Decimal(20), min_price=Decimal(3)))
    out += [
        OfferQuery(gpu_model=models[0], region=REGIONS[0], plan="card_hour", currency="USD"),
        OfferQuery(interconnect="nvlink", plan="card_hour", max_price=Decimal(20), currency="CNY"),
        OfferQuery(min_reliability=Decimal("0.5"), ordering="-gpus_free", currency="USD"),
        OfferQuery(min_reliability=Decimal(0), min_gpus=1, region=REGIONS[1], ordering="reliability"),
        OfferQuery(max_price=Decimal(0), currency="USD"),
        OfferQuery(min_gpus=8, ordering="gpus_free", currency="CNY"),
    ]
    return out


def figures(offers) -> list[tuple]:
    return [(o.pk, o.gpus_free, o.gpus_ok, o.sort_price, o.reliability) for o in offers]


def same(listed, recounted) -> bool:
    """Equal, reliability aside to 1e-4: an open outage counts until each statement's own clock
    (STATEMENT_TIMESTAMP(), as the live count has it), and two statements run apart (on a loaded machine up to
    seconds: a second is 1.2e-5 of a day-old server's history). Everything else, and the order, exactly."""
    a, b = figures(listed), figures(recounted)
    return [row[:4] for row in a] == [row[:4] for row in b] and all(
        abs(float(x[4]) - float(y[4])) < 1e-4 for x, y in zip(a, b, strict=True)
    )


def differing(listed, recounted) -> list[tuple]:
    a, b = figures(listed), figures(recounted)
    return [(x, y) for x, y in zip(a, b, strict=False) if x != y][:4] + ([len(a), len(b)] if len(a) != len(b) else [])


def assert_listing_answers_as_the_recount(models: list[int], now=None) -> int:
    now = now or timezone.now()
    compared = 0
    for query in searches(models):
        listed, recounted = offers_listed(query, now=now), offers_recounted(query, now=now)
        assert listed.count() == recounted.count(), query
        assert same(listed, recounted), (query, differing(listed, recounted))
        # Pages as the paginator asks for them.
        assert same(listed[2:5], recounted[2:5]), query
        compared += len(figures(recounted))
    return compared


def build_fleet(rng: random.Random, now) -> tuple[list[Server], list[int]]:
    models = [GpuModelFactory(interconnect=kind) for kind in ("nvlink", "pcie", "nvlink")]
    providers = [ProviderFactory(currency=rng.choice(["USD", "CNY"])) for _ in range(4)]
    providers.append(OrganizationFactory(kind="customer"))  # its server's offer lists, with no free cards
    servers = []
    for i in range(18):
        org = rng.choice(providers)
        price = Decimal(rng.choice(["2.5", "3.0", "7.1", "1.0", "17.75", "2.5"]))
        offer = {
            "currency": rng.choice(["USD", "CNY", org.currency]),
            "card_hour_price": price,
            "card_hour_interruptible_price": rng.choice([None, price / 2]),
            "server_month_price": rng.choice([None, Decimal(9000 + i)]),
            "server_month_interruptible_price": None,
            "pflops_year_price": rng.choice([None, Decimal(150000)]),
            "pflops_year_interruptible_price": None,
            "available_until": rng.choice([None, None, now + timedelta(days=3), now - timedelta(hours=1)]),
        }
        server = online_server(
            organization=org,
            gpu_model=rng.choice(models),
            gpus=rng.choice([2, 4, 8]),
            region=rng.choice(REGIONS),
            name=f"listing-{i}",
            offer=offer,
        )
        # Servers older than the window (reliability fixed), younger ones (it moves with the clock).
        Server.objects.filter(pk=server.pk).update(created_at=now - timedelta(days=rng.choice([1, 10, 45, 400])))
        servers.append(server)
    return servers, [m.pk for m in models]


def random_history(rng: random.Random, servers: list[Server], now) -> None:
    """Allocations now, later and before; workloads that started, failed or wait, inside and outside the window;
    outages closed inside it, cut by its start, long gone, and open."""
    customer = OrganizationFactory()
    for server in servers:
        for gpu in Gpu.objects.filter(server=server):
            shape = rng.random()
            if shape < 0.3:
                lease = LeaseFactory(organization=customer, start_at=now - timedelta(hours=1), end_at=None)
                AllocationFactory(lease=lease, gpu=gpu, period=(now - timedelta(hours=1), None))
            elif shape < 0.4:
                lease = LeaseFactory(
                    organization=customer, start_at=now + timedelta(hours=2), end_at=now + timedelta(hours=3)
                )
                AllocationFactory(lease=lease, gpu=gpu, period=(now + timedelta(hours=2), now + timedelta(hours=3)))
            elif shape < 0.5:
                lease = LeaseFactory(
                    organization=customer, start_at=now - timedelta(hours=5), end_at=now - timedelta(hours=4)
                )
                AllocationFactory(lease=lease, gpu=gpu, period=(now - timedelta(hours=5), now - timedelta(hours=4)))
        for _ in range(rng.choice([0, 1, 3])):
            add_workload(rng, server, customer, now)
        for _ in range(rng.choice([0, 1, 2])):
            add_outage(rng, server, now)


def add_workload(rng: random.Random, server: Server, customer: Organization, now) -> None:
    state = rng.choice([LeaseState.ACTIVE, LeaseState.FAILED, LeaseState.ENDED])
    lease = LeaseFactory(organization=customer, state=state, start_at=now - timedelta(days=40))
    created = now - timedelta(days=rng.choice([0.5, 5, 29.9, 31, 60]))
    started = rng.choice([None, created + timedelta(minutes=2)])
    Workload.objects.unscoped("test").create(lease=lease, server=server, created_at=created, started_at=started)


def add_outage(rng: random.Random, server: Server, now) -> None:
    if not ServerOutage.objects.filter(server=server, ended_at__isnull=True).exists() and rng.random() < 0.3:
        ServerOutage.objects.create(server=server, started_at=now - timedelta(minutes=rng.randint(1, 600)))
        return
    start = now - timedelta(days=rng.choice([2, 29.99, 30.01, 45]), seconds=rng.randint(0, 3600))
    ServerOutage.objects.create(server=server, started_at=start, ended_at=start + timedelta(hours=rng.choice([1, 30])))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_listing_answers_every_search_as_a_recount_through_a_random_series_of_changes(seed):
    rng = random.Random(seed)
    now = timezone.now()
    servers, models = build_fleet(rng, now)
    random_history(rng, servers, now)
    assert assert_listing_answers_as_the_recount(models) > 100
    customer = OrganizationFactory()

    def reprice():
        offer = Offer.objects.filter(server=rng.choice(servers), delisted_at__isnull=True).first()
        if offer:
            price = Decimal(rng.choice(["0.5", "2.5", "99"]))
            Offer.objects.filter(pk=offer.pk).update(
                card_hour_price=price, card_hour_interruptible_price=rng.choice([None, price / 2])
            )

    def delist_or_relist():
        server = rng.choice(servers)
        offer = Offer.objects.filter(server=server).order_by("-pk").first()
        if offer.delisted_at is None:
            Offer.objects.filter(pk=offer.pk).update(delisted_at=timezone.now())
        else:
            Offer.objects.create(
                organization=offer.organization, server=server, currency=offer.currency, card_hour_price=Decimal(4)
            )

    def server_state():
        server = rng.choice(servers)
        field = rng.choice(["status", "drained", "region", "interconnect"])
        value = {
            "status": rng.choice(["online", "offline", "unreachable"]),
            "drained": rng.random() < 0.5,
            "region": rng.choice(REGIONS),
            "interconnect": rng.choice(["nvlink", "pcie", ""]),
        }[field]
        Server.objects.filter(pk=server.pk).update(**{field: value})

    def organisation_state():
        org = rng.choice(servers).organization
        change = rng.choice([{"status": "suspended"}, {"status": "active"}, {"kind": "customer"}, {"kind": "both"}])
        Organization.objects.filter(pk=org.pk).update(**change)

    def allocate_or_end():
        gpu = rng.choice(list(Gpu.objects.filter(server__in=servers)))
        held = gpu.allocations.filter(period__contains=timezone.now()).first()
        if held:
            held.period = (held.period.lower, timezone.now())
            held.save(update_fields=["period"])
        else:
            lease = LeaseFactory(organization=customer, start_at=timezone.now(), end_at=None)
            AllocationFactory(lease=lease, gpu=gpu, period=(timezone.now(), None))

    def card_state():
        gpu = rng.choice(list(Gpu.objects.filter(server__in=servers)))
        Gpu.objects.filter(pk=gpu.pk).update(health=rng.choice(["healthy", "failed", "degraded"]))

    def workload():
        server = rng.choice(servers)
        if rng.random() < 0.5 or not server.workloads.exists():
            add_workload(rng, server, customer, timezone.now())
        else:
            w = server.workloads.order_by("?").first()
            Workload.objects.unscoped("test").filter(pk=w.pk).update(started_at=w.started_at or timezone.now())

    def lease_fails():
        lease = Lease.objects.filter(workloads__isnull=False).order_by("?").first()
        Lease.objects.filter(pk=lease.pk).update(state=rng.choice([LeaseState.FAILED, LeaseState.ENDED]))

    def outage():
        server = rng.choice(servers)
        open_one = ServerOutage.objects.filter(server=server, ended_at__isnull=True).first()
        if open_one:
            ServerOutage.objects.filter(pk=open_one.pk).update(ended_at=timezone.now())
        else:
            add_outage(rng, server, timezone.now())

    steps = [reprice, delist_or_relist, server_state, organisation_state, allocate_or_end, card_state, workload]
    steps += [lease_fails, outage]
    for _ in range(4):
        for _ in range(6):
            rng.choice(steps)()
        assert_listing_answers_as_the_recount(models)
    # Later instants: capacity copies and reliability parts stop answering as allocations start and end and the
    # window moves past workloads and outages; the search counts those rows live and still agrees.
    for later in (timedelta(hours=2, minutes=30), timedelta(days=1), timedelta(days=31)):
        assert_listing_answers_as_the_recount(models, now=timezone.now() + later)


def test_each_row_copies_its_offer_and_answers_with_stored_parts():
    now = timezone.now()
    server = online_server(gpus=4, region="cn-north-1")
    Server.objects.filter(pk=server.pk).update(created_at=now - timedelta(days=90))
    ServerOutage.objects.create(server=server, started_at=now - timedelta(days=3), ended_at=now - timedelta(days=2))
    row = OfferListing.objects.get(offer__server=server)
    assert (row.region, row.free_now, row.ok_cards, row.server_online, row.provider_ok) == (
        "cn-north-1",
        4,
        4,
        True,
        True,
    )
    assert row.rel_closed == 1 and row.rel_inside_seconds == Decimal(86400) and row.rel_fixed is not None
    # The stored number is the formula's: one day out of thirty.
    assert float(row.rel_fixed) == pytest.approx(1 - 1 / 30)
    [offer] = list(offers_listed(now=timezone.now()))
    assert offer.reliability == pytest.approx(1 - 1 / 30) and offer.gpus_free == 4
    Offer.objects.filter(server=server).update(delisted_at=now)
    assert not OfferListing.objects.exists()
    assert listing_sql.CREATE_SQL.count("'2592000 seconds'") == 1
    assert RELIABILITY_WINDOW.total_seconds() == 2592000


def test_rows_the_clock_has_passed_are_synced_again_by_the_refresh():
    now = timezone.now()
    servers = [online_server(gpus=2) for _ in range(3)]
    for server in servers:
        lease = LeaseFactory(state=LeaseState.FAILED)
        Workload.objects.unscoped("test").create(lease=lease, server=server, created_at=now - timedelta(days=10))
    assert set(OfferListing.objects.values_list("rel_failed", flat=True)) == {1}
    OfferListing.objects.update(rel_valid_until=now - timedelta(seconds=1), rel_failed=7)
    out = StringIO()
    call_command("refresh_listings", stdout=out)
    assert out.getvalue().strip() == "servers synced: 3"
    assert set(OfferListing.objects.values_list("rel_failed", flat=True)) == {1}
    assert not OfferListing.objects.filter(rel_valid_until__lte=now).exists()
    # In batches, each its own transaction.
    OfferListing.objects.update(rel_valid_until=now - timedelta(seconds=1), rel_failed=7)
    assert listings_refresh(batch=2) == 3
    assert set(OfferListing.objects.values_list("rel_failed", flat=True)) == {1}


def test_a_compiled_search_sends_what_the_queryset_would():
    """The statements are compiled once per shape with stand-ins; each search's own values go where they were."""
    server = online_server(gpus=2, region="cn-east-1")
    now = timezone.now()
    for query in searches([server.gpu_model_id]) + [OfferQuery(region="cn-east-1", currency="USD", max_price=5)]:
        listed = offers_listed(query, now=now)
        want_sql, want_params = (
            selectors.listing_rows(query, now=now).values_list(*selectors._ROW_FIELDS).query.sql_with_params()
        )
        got_params = listed._params(listed._compiled.page_params)
        assert listed._compiled.page_sql == want_sql, query
        assert [str(p) for p in got_params] == [str(p) for p in want_params], query


def test_a_resale_offer_takes_no_free_count_from_its_server():
    """A resale offer's free cards are its contract's (scheduler.resale), not the server's: its row says so
    (`free_from_capacity` false), capacity changes leave it alone, and the search counts them as the recount does."""
    server = online_server(gpus=4)
    Offer.objects.filter(server=server).update(is_resale=True)
    row = OfferListing.objects.get(offer__server=server)
    assert (row.free_from_capacity, row.free_now) == (False, 4)  # the server's count no longer kept
    lease = LeaseFactory(start_at=timezone.now(), end_at=None)
    AllocationFactory(lease=lease, gpu=Gpu.objects.filter(server=server).first(), period=(timezone.now(), None))
    row.refresh_from_db()
    assert row.free_now == 4
    now = timezone.now()
    assert figures(offers_listed(now=now)) == figures(offers_recounted(now=now))
    assert [o.gpus_free for o in offers_listed(now=now)] == [0]  # no contract behind it: none of its own free
    Offer.objects.filter(server=server).update(is_resale=False)
    row.refresh_from_db()
    assert (row.free_from_capacity, row.free_now) == (True, 3)
