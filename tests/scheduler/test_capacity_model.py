"""The capacity model (scheduler.models.Capacity, kept by database triggers) equals a recount from the allocation
and card rows after a seeded random walk of creates, reservations, resizes, ends, stops and starts, preemptions,
failovers, drains and cleanings; and what placement and offer search read from it equals their live counts."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from accounts.errors import DomainError
from inventory.models import Gpu, GpuHealthEvent, Server
from marketplace.selectors import offers_listed
from scheduler import lifecycle, resale, selectors, services
from scheduler.models import Allocation, Capacity, Lease, LeaseState
from scheduler.selectors import Filters, free_gpus, period_range
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server

pytestmark = pytest.mark.django_db


def recount(server: Server, at: datetime, *, layers: tuple[int, ...] = (0,)) -> dict:
    """The row the model must hold for `server` counted at `at`, from the card and allocation rows in Python: the
    holders of cards (layer 0); `layers=(0, 1)` counts resale allocations (scheduler/resale.py) too."""
    ok = free_now = free_onward = 0
    boundaries = []
    for gpu in Gpu.objects.filter(server=server):
        if gpu.health == "failed" or gpu.drained or gpu.needs_cleaning:
            continue
        ok += 1
        later = [
            a.period
            for a in Allocation.objects.filter(gpu=gpu, layer__in=layers)
            if a.period.upper is None or a.period.upper > at  # overlaps [at, infinity)
        ]
        free_now += not any(p.lower <= at for p in later)
        free_onward += not later
        boundaries += [p.lower if p.lower > at else p.upper for p in later]
    boundaries = [b for b in boundaries if b is not None]
    return {
        "ok_cards": ok,
        "free_now": free_now,
        "free_onward": free_onward,
        "valid_until": min(boundaries) if boundaries else None,
    }


def assert_model_matches(servers: list[Server]) -> None:
    for server in servers:
        row = Capacity.objects.get(server=server)
        want = recount(server, row.as_of)
        got = {
            "ok_cards": row.ok_cards,
            "free_now": row.free_now,
            "free_onward": row.free_onward,
            "valid_until": None if row.valid_until.year == 9999 else row.valid_until,
        }
        assert got == want, (server.name, row.as_of)
        # Resale rows lie inside their backing allocations: counted too, they would change no count.
        every = recount(server, row.as_of, layers=(0, 1))
        assert {k: every[k] for k in COUNTS} == {k: want[k] for k in COUNTS}, (server.name, row.as_of)


COUNTS = ("ok_cards", "free_now", "free_onward")


def assert_readers_match_live_counts(servers: list[Server]) -> None:
    now = timezone.now()
    lifecycle.capacity_refresh()  # what leases_run does: no row is stale for `now`
    assert not Capacity.objects.filter(valid_until__lte=now).exists()
    period = period_range(now, None)
    filters = Filters(plan="card_hour")
    live = selectors.capacity_of(free_gpus(filters, period))
    assert selectors.free_capacity(filters, period) == live
    # Read for some servers only (a lease growing onto its own): the same rows as the live count's for those.
    some = {server.pk for server in servers[::2]}
    assert selectors.free_capacity(filters, period, server_ids=some) == [c for c in live if c.server_id in some]
    bounded = period_range(now, now + timedelta(hours=1))
    assert selectors.free_capacity(filters, bounded, server_ids=some) == [
        c for c in selectors.capacity_of(free_gpus(filters, bounded)) if c.server_id in some
    ]
    busy = selectors.busy_gpu_ids(period_range(now, now + timedelta(seconds=1)))
    for offer in offers_listed(now=now):
        if offer.is_resale:
            continue  # its free cards are its contract's, not the server's (tests/scheduler/test_resale.py)
        cards = selectors.allocatable_gpus(Filters()).filter(server_id=offer.server_id)
        assert offer.gpus_ok == cards.count()
        assert offer.gpus_free == cards.exclude(id__in=busy).count()


@pytest.mark.parametrize(("seed", "notice"), [(1, 0), (2, 600), (3, 0), (4, 600)])
def test_the_capacity_model_equals_a_recount_after_a_random_walk(seed, notice):
    rng = random.Random(seed)
    provider = ProviderFactory()
    model = GpuModelFactory()
    servers = [
        online_server(organization=provider, gpu_model=model, gpus=size, name=f"walk-{seed}-{i}")
        for i, size in enumerate([8, 8, 4, 2])
    ]
    customers = [OrganizationFactory() for _ in range(3)]
    assert_model_matches(servers)
    done: dict[str, int] = {}

    def live_leases(**kwargs) -> list[Lease]:
        return list(Lease.objects.filter(**kwargs).order_by("pk"))

    def create() -> None:
        now = timezone.now()
        kwargs: dict = {"org": rng.choice(customers), "plan": "card_hour", "gpu_count": rng.choice([1, 1, 2, 3, 4])}
        shape = rng.random()
        if shape < 0.25:
            kwargs["interruptible"] = True
        elif shape < 0.4:
            kwargs["end_at"] = now + timedelta(hours=rng.choice([1, 2, 5]))
        elif shape < 0.5:
            kwargs["start_at"] = now + timedelta(hours=rng.choice([1, 3]))
            kwargs["end_at"] = kwargs["start_at"] + timedelta(hours=2)
        elif shape < 0.55:
            kwargs.update(plan="server_month", gpu_count=None, servers=1, end_at=now + timedelta(days=30))
        services.lease_create(**kwargs)

    def resize() -> None:
        lease = rng.choice(live_leases(state=LeaseState.ACTIVE, plan="card_hour"))
        services.lease_resize(lease=lease, gpu_count=max(1, lease.gpu_count + rng.choice([-2, -1, 1, 2])))

    def end() -> None:
        services.lease_end(lease=rng.choice(live_leases(state__in=[LeaseState.ACTIVE, LeaseState.SCHEDULED])))

    def stop_or_start() -> None:
        lease = rng.choice(live_leases(state__in=[LeaseState.ACTIVE, LeaseState.STOPPED], plan="card_hour"))
        if lease.state == LeaseState.ACTIVE:
            services.lease_stop(lease=lease)
        else:
            services.lease_start(lease=lease)

    def preempt() -> None:
        # An on-demand request for more than is free takes interruptible leases' cards.
        free = sum(
            c.free for c in selectors.free_capacity(Filters(plan="card_hour"), period_range(timezone.now(), None))
        )
        services.lease_create(org=rng.choice(customers), plan="card_hour", gpu_count=min(8, free + rng.choice([1, 2])))

    def fail_a_card() -> None:
        held = list(
            Allocation.objects.filter(period__contains=timezone.now(), gpu__health="healthy").select_related("gpu")
        )
        gpu = rng.choice(held).gpu
        GpuHealthEvent.objects.create(
            gpu=gpu, server=gpu.server, at=timezone.now(), from_health="healthy", to_health="failed", reason="XID 79"
        )
        Gpu.objects.filter(pk=gpu.pk).update(health="failed")
        lifecycle.failover_run()

    def card_state() -> None:
        gpu = rng.choice(list(Gpu.objects.filter(server__in=servers)))
        field = rng.choice(["drained", "needs_cleaning", "health"])
        if field == "health":
            Gpu.objects.filter(pk=gpu.pk).update(health="healthy" if gpu.health != "healthy" else "degraded")
        else:
            Gpu.objects.filter(pk=gpu.pk).update(**{field: not getattr(gpu, field)})

    def run_leases() -> None:
        lifecycle.leases_run()

    steps = [create] * 6 + [resize] * 3 + [end] * 3 + [stop_or_start] * 2 + [preempt] * 2 + [fail_a_card, card_state]
    steps += [run_leases]
    with override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=notice):
        for _ in range(80):
            step = rng.choice(steps)
            try:
                step()
            except (DomainError, IndexError):  # refused (409, 400) or nothing to act on: the rows did not change
                pass
            else:
                done[step.__name__] = done.get(step.__name__, 0) + 1
            assert_model_matches(servers)
    assert_readers_match_live_counts(servers)
    # The walk did what it says (a seed that never preempts or fails over would prove less).
    assert {"create", "resize", "end", "preempt", "fail_a_card"} <= set(done), done
    assert Allocation.objects.filter(close_reason__in=["preempted", "failover"]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_truncate_of_the_allocations_recounts_every_server():
    provider = ProviderFactory()
    server = online_server(organization=provider, gpus=4)
    services.lease_create(org=OrganizationFactory(), plan="card_hour", gpu_count=3)
    assert Capacity.objects.get(server=server).free_now == 1
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE scheduler_leaseevent, scheduler_allocation, scheduler_lease CASCADE")
    assert_model_matches([server])
    assert Capacity.objects.get(server=server).free_now == 4


@pytest.mark.parametrize("seed", [11, 12])
def test_resale_rows_leave_the_capacity_model_as_a_recount_of_the_card_holders_says(seed):
    """A broker's contracts resold card by card (scheduler/resale.py): resale leases made, resized, ended, taken back,
    their contract's cards failing over and contracts ending, beside plain leases; after every step the model equals
    a recount of the card holders, and counting the resale rows too changes no count."""
    rng = random.Random(seed)
    provider = ProviderFactory()
    model = GpuModelFactory()
    servers = [
        online_server(organization=provider, gpu_model=model, gpus=8, name=f"resale-{seed}-{i}") for i in range(3)
    ]
    broker = OrganizationFactory()
    renters = [OrganizationFactory() for _ in range(2)]
    offers = []
    for _ in range(2):
        backing = services.lease_create(
            org=broker, plan="server_month", servers=1, end_at=timezone.now() + timedelta(days=30)
        )
        offers.append(
            resale.resale_offer_create(
                org=broker,
                lease=backing,
                prices={"card_hour": Decimal("4")},
                interruptible_prices={"card_hour": Decimal("2")},
            )
        )
    assert_model_matches(servers)
    done: dict[str, int] = {}

    def resale_leases(**kwargs) -> list[Lease]:
        return list(Lease.objects.filter(offer__is_resale=True, **kwargs).order_by("pk"))

    def create() -> None:
        services.lease_create(
            org=rng.choice(renters),
            plan="card_hour",
            gpu_count=rng.choice([1, 2, 3]),
            offer=rng.choice(offers),
            interruptible=rng.random() < 0.5,
        )

    def plain() -> None:
        services.lease_create(org=rng.choice(renters), plan="card_hour", gpu_count=rng.choice([1, 2]))

    def resize() -> None:
        lease = rng.choice(resale_leases(state=LeaseState.ACTIVE))
        services.lease_resize(lease=lease, gpu_count=max(1, lease.gpu_count + rng.choice([-1, 1, 2])))

    def end() -> None:
        services.lease_end(lease=rng.choice(resale_leases(state=LeaseState.ACTIVE)))

    def reclaim() -> None:
        resale.resale_reclaim(offer=rng.choice(offers), gpu_count=1)

    def fail_a_card() -> None:
        held = list(
            Allocation.objects.filter(period__contains=timezone.now(), layer=1, gpu__health="healthy").select_related(
                "gpu"
            )
        )
        gpu = rng.choice(held).gpu
        GpuHealthEvent.objects.create(
            gpu=gpu, server=gpu.server, at=timezone.now(), from_health="healthy", to_health="failed", reason="XID 79"
        )
        Gpu.objects.filter(pk=gpu.pk).update(health="failed")
        lifecycle.failover_run()

    def end_a_contract() -> None:
        if done.get("create", 0) < 6:
            raise IndexError  # not before there is something resold to end with it
        # Billing's end (the broker's own is refused while its cards are resold): the resale leases end with it.
        contracts = list(Lease.objects.filter(plan="server_month", state="active"))
        services.lease_end(lease=rng.choice(contracts), reason="funds_exhausted")

    steps = [create] * 6 + [plain, resize, resize, end, reclaim, fail_a_card, end_a_contract, lifecycle.leases_run]
    with override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=0):
        for _ in range(50):
            step = rng.choice(steps)
            try:
                step()
            except (DomainError, IndexError):
                pass
            else:
                done[step.__name__] = done.get(step.__name__, 0) + 1
            assert_model_matches(servers)
    assert_readers_match_live_counts(servers)
    assert {"create", "resize", "end", "reclaim", "fail_a_card"} <= set(done), done
    assert Allocation.objects.filter(layer=1).exists()
