"""Resale (issue 20, scheduler/resale.py): a broker's offer of cards it holds by contract, leases placed only on
those cards, the database's last word on them, their life with the contract behind them, and lend-back."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from inventory.models import Gpu, Offer
from scheduler import lifecycle, resale, services
from scheduler.models import Allocation, Capacity, Lease, LeaseEvent, Resale
from scheduler.selectors import period_range
from tests.conftest import Persona, make_persona
from tests.factories import GpuHealthEventFactory, OrganizationFactory, online_server


@pytest.fixture
def broker(db) -> Persona:
    """A customer organisation acting as a compute broker."""
    return make_persona(OrganizationFactory(name="Dana Compute Brokers"), email="dana@example.com")


def contract(persona: Persona, *, plan: str = "server_month", days: int = 30, **body) -> dict:
    """An active contract of `persona` (201 asserted): one whole server by the month unless told otherwise."""
    body = {"plan": plan, "end_at": (timezone.now() + timedelta(days=days)).isoformat(), **body}
    if plan == "server_month":
        body.setdefault("servers", 1)
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def resell(persona: Persona, lease_id: int, **body):
    body = {"backed_by_lease": lease_id, "prices": {"card_hour": "4.0000"}, **body}
    return persona.api.post("/api/v1/offers/", body, format="json")


def resale_offer(persona: Persona, lease_id: int, **body) -> dict:
    response = resell(persona, lease_id, **body)
    assert response.status_code == 201, response.content
    return response.json()


def rent(persona: Persona, **body):
    body.setdefault("plan", "card_hour")
    return persona.api.post("/api/v1/leases/", body, format="json")


def cards_of(lease_id: int, *, layer: int | None = None) -> set[int]:
    """The cards a lease holds now or later."""
    now = timezone.now()
    rows = Allocation.objects.filter(lease_id=lease_id, period__overlap=period_range(now, None))
    if layer is not None:
        rows = rows.filter(layer=layer)
    return set(rows.values_list("gpu_id", flat=True))


def code(response) -> str:
    return response.json()["error"]["code"]


# --- offers --------------------------------------------------------------------------------------------------


def test_a_resale_offer_is_published_from_the_brokers_own_active_contract_with_the_broker_as_seller(
    broker, alice, rack
):
    backing = contract(broker)
    server = backing["gpus"][0]["server"]
    offer = resale_offer(broker, backing["id"], interruptible_prices={"card_hour": "3.0000"})
    assert offer["is_resale"] is True and offer["server"] == server
    assert offer["provider"] == "Dana Compute Brokers"
    assert offer["prices"] == {"card_hour": "4.0000", "server_month": None, "pflops_year": None}
    lease = Lease.objects.get(pk=backing["id"])
    assert offer["available_until"] == lease.end_at.isoformat().replace("+00:00", "Z")
    row = Resale.objects.get(offer_id=offer["id"])
    assert row.lease_id == backing["id"] and row.interruptible_only is False
    assert Offer.objects.get(pk=offer["id"]).organization_id == broker.org.pk
    # The provider's own offer of that server is still live beside it: one live direct offer, any number of resales.
    assert Offer.objects.live().filter(server_id=server, is_resale=False).count() == 1
    # It is the broker's to change and delist, not the provider's.
    changed = broker.api.patch(f"/api/v1/offers/{offer['id']}/", {"prices": {"card_hour": "5.0000"}}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["prices"]["card_hour"] == "5.0000"
    refused = broker.api.patch(f"/api/v1/offers/{offer['id']}/", {"prices": {"server_month": "9"}}, format="json")
    assert refused.status_code == 400
    assert alice.api.delete(f"/api/v1/offers/{offer['id']}/").status_code == 403


def test_resale_offer_refusals(broker, alice, bob, rack, h100):
    online_server(organization=bob.org, gpu_model=h100, name="spare")
    mine = contract(broker)
    theirs = contract(alice)
    hourly = rent(broker, gpu_count=1).json()
    # Another organisation's lease reads like a missing one.
    assert resell(broker, theirs["id"]).status_code == 404
    assert resell(broker, 10**12).status_code == 404
    # Only a contract backs one.
    response = resell(broker, hourly["id"])
    assert response.status_code == 400 and "backed_by_lease" in response.json()["error"]["fields"]
    # card_hour prices only; a price, and an interruptible one below it.
    assert resell(broker, mine["id"], prices={"card_hour": "4", "server_month": "100"}).status_code == 400
    assert resell(broker, mine["id"], prices={}).status_code == 400
    assert resell(broker, mine["id"], interruptible_prices={"card_hour": "9"}).status_code == 400
    # Lent back interruptibly: the interruptible price alone.
    assert resell(broker, mine["id"], interruptible_only=True).status_code == 400
    # Not past the contract's end; a server it holds cards on; not more cards than it holds.
    lease = Lease.objects.get(pk=mine["id"])
    late = (lease.end_at + timedelta(seconds=1)).isoformat()
    assert resell(broker, mine["id"], available_until=late).status_code == 400
    other = next(s for s in rack if s.pk != mine["gpus"][0]["server"])
    response = resell(broker, mine["id"], server=other.pk)
    assert response.status_code == 400 and "server" in response.json()["error"]["fields"]
    assert resell(broker, mine["id"], min_gpus=9).status_code == 400
    # A strange body is a 400, never a 500.
    assert resell(broker, "x").status_code == 400
    assert resell(broker, mine["id"], prices="free").status_code == 400
    # One live resale offer per contract and server.
    resale_offer(broker, mine["id"])
    second = resell(broker, mine["id"])
    assert second.status_code == 409 and code(second) == "offer_exists"
    # A contract no longer active: 409.
    ended = contract(broker)
    assert broker.api.post(f"/api/v1/leases/{ended['id']}/end/").status_code == 200
    response = resell(broker, ended["id"])
    assert response.status_code == 409 and code(response) == "lease_not_active"


def test_a_contract_over_several_servers_names_the_server_it_resells(broker, rack):
    backing = contract(broker, servers=2)
    servers = sorted({g["server"] for g in backing["gpus"]})
    assert len(servers) == 2
    ambiguous = resell(broker, backing["id"])
    assert ambiguous.status_code == 400 and "server" in ambiguous.json()["error"]["fields"]
    for server in servers:
        assert resale_offer(broker, backing["id"], server=server)["server"] == server


def test_a_pflops_year_contract_backs_resale_too(broker, rack):
    backing = contract(broker, plan="pflops_year", pflops="2.9", days=365)
    assert len(backing["gpus"]) == 3
    offer = resale_offer(broker, backing["id"])
    assert offer["server"] == backing["gpus"][0]["server"]


# --- placement ---------------------------------------------------------------------------------------------


def test_resale_leases_are_placed_only_on_the_contracts_cards_and_never_twice_on_one(broker, alice, charlie, rack):
    backing = contract(broker)
    held = cards_of(backing["id"])
    offer = resale_offer(broker, backing["id"])
    first = rent(alice, offer=offer["id"], gpu_count=5)
    assert first.status_code == 201, first.content
    first = first.json()
    assert cards_of(first["id"]) <= held and len(cards_of(first["id"])) == 5
    for row in Allocation.objects.filter(lease_id=first["id"]):
        assert row.layer == 1 and row.backing.lease_id == backing["id"] and row.backing.gpu_id == row.gpu_id
        assert row.unit_price == Decimal("4.000000") and row.units == 1
    # Open-ended when asked, it ends with the contract behind it.
    assert Lease.objects.get(pk=first["id"]).end_at == Lease.objects.get(pk=backing["id"]).end_at
    # The rest of the contract's cards, and no more.
    too_many = rent(charlie, offer=offer["id"], gpu_count=4)
    assert too_many.status_code == 409 and code(too_many) == "no_capacity"
    beyond = rent(charlie, offer=offer["id"], gpu_count=9)
    assert beyond.status_code == 400
    second = rent(charlie, offer=offer["id"], gpu_count=3).json()
    assert cards_of(second["id"]) == held - cards_of(first["id"])
    # A plain lease never lands on the contract's cards, and a resize stays within them.
    plain = rent(charlie, gpu_count=8).json()
    assert cards_of(plain["id"]).isdisjoint(held)
    grow = alice.api.post(f"/api/v1/leases/{first['id']}/resize/", {"gpu_count": 6}, format="json")
    assert grow.status_code == 409
    assert charlie.api.post(f"/api/v1/leases/{second['id']}/end/").status_code == 200
    grown = alice.api.post(f"/api/v1/leases/{first['id']}/resize/", {"gpu_count": 7}, format="json")
    assert grown.status_code == 200, grown.content
    assert cards_of(first["id"]) <= held and len(cards_of(first["id"])) == 7
    # A resale lease cannot stop (it could not come back onto its contract's cards).
    stopped = alice.api.post(f"/api/v1/leases/{first['id']}/stop/")
    assert stopped.status_code == 409


def test_a_resale_lease_asked_to_end_after_the_contract_ends_with_it(broker, alice, rack):
    backing = contract(broker, days=2)
    offer = resale_offer(broker, backing["id"])
    late = (timezone.now() + timedelta(days=5)).isoformat()
    lease = rent(alice, offer=offer["id"], gpu_count=1, end_at=late).json()
    end = Lease.objects.get(pk=backing["id"]).end_at
    assert Lease.objects.get(pk=lease["id"]).end_at == end
    assert Allocation.objects.get(lease_id=lease["id"]).period.upper == end


def test_the_database_keeps_resales_inside_their_backing_and_apart(broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    lease = rent(alice, offer=offer["id"], gpu_count=1).json()
    row = Allocation.objects.get(lease_id=lease["id"])
    base = Allocation.objects.get(pk=row.backing_id)
    other = Allocation.objects.filter(lease_id=backing["id"]).exclude(pk=base.pk).first()

    def refused(**fields) -> None:
        values = {
            "lease_id": lease["id"],
            "gpu_id": row.gpu_id,
            "server_id": row.server_id,
            "period": row.period,
            "unit_price": 1,
            "units": 1,
            "backing_id": base.pk,
            **fields,
        }
        with pytest.raises(IntegrityError), transaction.atomic():
            Allocation.objects.create(**values)

    refused()  # a second resale of the same card at the same time (exclusion constraint, layer 1)
    refused(gpu_id=other.gpu_id)  # on another card than its backing's (containment trigger)
    upper = base.period.upper
    refused(period=period_range(row.period.lower, upper + timedelta(hours=1)), gpu_id=other.gpu_id)
    refused(backing_id=row.pk)  # a resale of a resale
    # Closing the backing allocation without its resale is refused too.
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.filter(pk=base.pk).update(period=period_range(base.period.lower, timezone.now()))
    # A resale may sit on its backing's card for part of its time, beside a resale of another time.
    later = period_range(upper - timedelta(hours=2), upper)
    Allocation.objects.filter(pk=row.pk).update(period=period_range(row.period.lower, upper - timedelta(hours=2)))
    Allocation.objects.create(
        lease_id=lease["id"], gpu_id=row.gpu_id, server_id=row.server_id, period=later, unit_price=1, units=1,
        backing_id=base.pk,
    )  # fmt: skip


def test_resale_rows_leave_the_capacity_model_as_it_was(broker, alice, rack):
    backing = contract(broker)
    server = backing["gpus"][0]["server"]

    def row() -> tuple:
        capacity = Capacity.objects.get(server_id=server)
        return capacity.ok_cards, capacity.free_now, capacity.free_onward, capacity.valid_until

    before = row()
    assert before[1] == 0  # the contract holds the whole server
    offer = resale_offer(broker, backing["id"])
    lease = rent(alice, offer=offer["id"], gpu_count=3).json()
    assert row() == before
    alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 2}, format="json")
    alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    assert row() == before
    with connection.cursor() as cursor:
        cursor.execute("SELECT scheduler_capacity_recount(ARRAY[%s]::bigint[])", [server])
    assert row()[:3] == before[:3]


def test_a_delisted_resale_offer_places_no_new_cards_and_its_leases_run_on(broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"], available_until=(timezone.now() + timedelta(days=3)).isoformat())
    lease = rent(alice, offer=offer["id"], gpu_count=2).json()
    # No later than the offer is available.
    assert Lease.objects.get(pk=lease["id"]).end_at == Offer.objects.get(pk=offer["id"]).available_until
    assert broker.api.delete(f"/api/v1/offers/{offer['id']}/").status_code == 204
    with pytest.raises(resale.NoCapacity):
        services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=Offer.objects.get(pk=offer["id"]))
    grow = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 3}, format="json")
    assert grow.status_code == 409
    assert Lease.objects.get(pk=lease["id"]).state == "active" and len(cards_of(lease["id"])) == 2


# --- life cycle --------------------------------------------------------------------------------------------


def test_when_the_contract_ends_its_resale_leases_end_with_it(broker, alice, charlie, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    running = rent(alice, offer=offer["id"], gpu_count=2).json()
    reserved = rent(
        charlie,
        offer=offer["id"],
        gpu_count=1,
        start_at=(timezone.now() + timedelta(hours=2)).isoformat(),
        end_at=(timezone.now() + timedelta(hours=4)).isoformat(),
    ).json()
    # An end the broker did not ask for (billing stopped the contract: funds ran out).
    services.lease_end(lease=Lease.objects.get(pk=backing["id"]), reason="funds_exhausted")
    assert Lease.objects.get(pk=backing["id"]).state == "ended"
    ended = Lease.objects.get(pk=running["id"])
    assert ended.state == "ended" and ended.end_reason == "backing_ended"
    assert Lease.objects.get(pk=reserved["id"]).state == "cancelled"
    assert not cards_of(running["id"]) and not Allocation.objects.filter(lease_id=reserved["id"]).exists()
    assert set(Allocation.objects.filter(lease_id=running["id"]).values_list("close_reason", flat=True)) == {
        "backing_ended"
    }
    assert LeaseEvent.objects.filter(lease_id=running["id"], kind="ended", data__reason="backing_ended").exists()


def test_a_preempted_contract_gives_its_resale_leases_the_same_notice(broker, alice, charlie, bob, h100):
    server = online_server(organization=bob.org, gpu_model=h100, name="solo")
    backing = contract(broker, interruptible=True)
    assert backing["gpus"][0]["server"] == server.pk
    offer = resale_offer(broker, backing["id"], prices={}, interruptible_prices={"card_hour": "3.0000"})
    resold = rent(alice, offer=offer["id"], gpu_count=2, interruptible=True).json()
    assert resold["interruptible"] is True
    now = timezone.now()
    with override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=600):
        taken = rent(charlie, gpu_count=8)
    assert taken.status_code == 201, taken.content
    lease = Lease.objects.get(pk=resold["id"])
    assert lease.preempt_at is not None and lease.preempt_at >= now + timedelta(seconds=600)
    assert LeaseEvent.objects.filter(lease=lease, kind="preemption_notice", data__reason="backing_preempted").exists()
    with time_machine.travel(lease.preempt_at + timedelta(seconds=1)):
        lifecycle.leases_run()
    assert Lease.objects.get(pk=resold["id"]).state == "preempted"


def test_the_brokers_own_end_of_a_resold_contract_is_refused_while_resale_leases_run(broker, alice, charlie, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"], interruptible_prices={"card_hour": "3.0000"})
    firm = rent(alice, offer=offer["id"], gpu_count=2).json()
    spot = rent(charlie, offer=offer["id"], gpu_count=1, interruptible=True).json()
    refused = broker.api.post(f"/api/v1/leases/{backing['id']}/end/")
    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "resold_cards_in_use"
    assert "1 on-demand and 1 interruptible" in error["message"]
    assert "/reclaim/" in error["message"] and "cannot be reclaimed" in error["message"]
    # Nothing changed: the contract and both renters keep their cards.
    assert Lease.objects.get(pk=backing["id"]).state == "active"
    assert len(cards_of(firm["id"])) == 2 and len(cards_of(spot["id"])) == 1
    # The interruptible renter gets the usual notice through a reclaim; the on-demand one ends when it will.
    assert broker.api.post(f"/api/v1/offers/{offer['id']}/reclaim/", {"gpu_count": 1}, format="json").status_code == 200
    assert Lease.objects.get(pk=spot["id"]).preempt_at is not None
    assert alice.api.post(f"/api/v1/leases/{firm['id']}/end/").status_code == 200
    assert broker.api.post(f"/api/v1/leases/{backing['id']}/end/").status_code == 409  # the notice still runs
    with time_machine.travel(Lease.objects.get(pk=spot["id"]).preempt_at + timedelta(seconds=1)):
        lifecycle.leases_run()
        assert Lease.objects.get(pk=spot["id"]).state == "preempted"
        assert broker.api.post(f"/api/v1/leases/{backing['id']}/end/").status_code == 200
    assert Lease.objects.get(pk=backing["id"]).state == "ended"


def test_an_interruptible_contract_is_resold_interruptibly_only(broker, alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, name="solo")
    backing = contract(broker, interruptible=True)
    # An on-demand price, alone or above an interruptible one: 400 on prices, saying why.
    for extra in ({}, {"interruptible_prices": {"card_hour": "3.0000"}}):
        refused = resell(broker, backing["id"], **extra)
        assert refused.status_code == 400, refused.content
        assert "interruptibly only" in refused.json()["error"]["fields"]["prices"][0]
    offer = resale_offer(broker, backing["id"], prices={}, interruptible_prices={"card_hour": "3.0000"})
    assert offer["prices"]["card_hour"] is None
    # PATCH keeps the rule: no on-demand price added later.
    changed = broker.api.patch(f"/api/v1/offers/{offer['id']}/", {"prices": {"card_hour": "5.0000"}}, format="json")
    assert changed.status_code == 400 and "prices" in changed.json()["error"]["fields"]
    assert Offer.objects.get(pk=offer["id"]).card_hour_price is None
    # So no renter gets on-demand cards off it.
    assert rent(alice, offer=offer["id"], gpu_count=1).status_code in (400, 409)
    assert rent(alice, offer=offer["id"], gpu_count=1, interruptible=True).status_code == 201


def test_a_failed_contract_card_is_replaced_and_its_resale_follows_within_the_contract(broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    lease = rent(alice, offer=offer["id"], gpu_count=2).json()
    failing = Allocation.objects.filter(lease_id=lease["id"]).order_by("pk").first()
    gpu = Gpu.objects.get(pk=failing.gpu_id)
    gpu.health = Gpu.Health.FAILED
    gpu.save(update_fields=["health"])
    GpuHealthEventFactory(gpu=gpu, reason="xid 79")
    lifecycle.failover_run()
    held = cards_of(backing["id"], layer=0)
    assert gpu.pk not in held and len(held) == 8  # the contract got a card elsewhere
    now_cards = cards_of(lease["id"])
    assert len(now_cards) == 2 and gpu.pk not in now_cards
    for row in Allocation.objects.filter(lease_id=lease["id"], period__overlap=period_range(timezone.now(), None)):
        assert row.backing.lease_id == backing["id"] and row.backing.gpu_id == row.gpu_id
        assert row.server_id == offer["server"]
    assert LeaseEvent.objects.filter(lease_id=lease["id"], kind="failover").count() == 1


def test_orphaned_resale_leases_are_ended_by_run_leases(broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    lease = rent(alice, offer=offer["id"], gpu_count=1).json()
    # As if follow_backing had skipped it (another transaction held it): the contract ended under it.
    Lease.objects.filter(pk=backing["id"]).update(state="ended")
    row = Allocation.objects.get(lease_id=lease["id"])
    Allocation.objects.filter(pk=row.pk).update(
        period=period_range(row.period.lower, row.period.lower + timedelta(microseconds=1))
    )
    assert resale.resale_orphans_end() == 1
    assert Lease.objects.get(pk=lease["id"]).end_reason == "backing_ended"
    assert resale.resale_orphans_end() == 0


# --- lend-back ---------------------------------------------------------------------------------------------


def test_lend_back_reclaims_cards_with_the_usual_preemption_notice(broker, alice, charlie, rack):
    backing = contract(broker)
    offer = resale_offer(
        broker, backing["id"], prices={}, interruptible_prices={"card_hour": "1.5000"}, interruptible_only=True
    )
    assert offer["prices"]["card_hour"] is None and offer["interruptible_prices"]["card_hour"] == "1.5000"
    firm = rent(alice, offer=offer["id"], gpu_count=1)
    assert firm.status_code == 400  # lent back: interruptible only
    first = rent(alice, offer=offer["id"], gpu_count=2, interruptible=True).json()
    second = rent(charlie, offer=offer["id"], gpu_count=3, interruptible=True).json()
    url = f"/api/v1/offers/{offer['id']}/reclaim/"
    too_many = broker.api.post(url, {"gpu_count": 6}, format="json")
    assert too_many.status_code == 409 and code(too_many) == "not_enough_interruptible"
    assert too_many.json()["error"]["reclaimable"] == 5
    assert alice.api.post(url, {"gpu_count": 1}, format="json").status_code == 403
    assert broker.api.post(url, {"gpu_count": 0}, format="json").status_code == 400
    now = timezone.now()
    with override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=300):
        done = broker.api.post(url, {"gpu_count": 2}, format="json")
    assert done.status_code == 200, done.content
    body = done.json()
    assert body["leases"] == [second["id"]] and body["gpu_count"] == 3  # newest first, whole leases
    victim = Lease.objects.get(pk=second["id"])
    assert victim.preempt_at >= now + timedelta(seconds=300)
    assert LeaseEvent.objects.filter(lease=victim, kind="preemption_notice").exists()
    assert Lease.objects.get(pk=first["id"]).preempt_at is None
    with time_machine.travel(victim.preempt_at + timedelta(seconds=1)):
        lifecycle.leases_run()
        assert Lease.objects.get(pk=second["id"]).state == "preempted"
        assert not cards_of(second["id"])
    # Reclaiming a provider's own offer is not a thing.
    direct = Offer.objects.get(server_id=offer["server"], is_resale=False)
    with pytest.raises(services.InvalidInput):
        resale.resale_reclaim(offer=direct, gpu_count=1)


# --- racing --------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_racing_resale_leases_never_double_book_the_contracts_cards():
    from collections import Counter

    from tests.factories import GpuModelFactory, ProviderFactory
    from tests.scheduler.test_concurrency import race

    provider = ProviderFactory()
    model = GpuModelFactory()
    for index in range(3):
        online_server(organization=provider, gpu_model=model, name=f"resale-race-{index}")
    broker = OrganizationFactory()
    backing = services.lease_create(
        org=broker, plan="server_month", servers=2, end_at=timezone.now() + timedelta(days=30)
    )
    servers = sorted(set(backing.allocations.values_list("server_id", flat=True)))
    offers = [
        resale.resale_offer_create(org=broker, lease=backing, server_id=server, prices={"card_hour": Decimal("4")})
        for server in servers
    ]
    renters = [OrganizationFactory() for _ in range(4)]

    # 40 requests for one card each on 16 resold cards, alongside plain requests for the free third server's.
    def call(i: int) -> None:
        if i % 5 == 4:
            services.lease_create(org=renters[i % 4], plan="card_hour", gpu_count=1)
        else:
            services.lease_create(org=renters[i % 4], plan="card_hour", gpu_count=1, offer=offers[i % 2])

    outcomes = race(50, call)

    assert outcomes == Counter({"granted": 16 + 8, "no_capacity": 26}), outcomes
    resold = Allocation.objects.filter(layer=1)
    assert resold.count() == 16 and resold.values("gpu_id").distinct().count() == 16
    held = set(backing.allocations.filter(layer=0).values_list("gpu_id", flat=True))
    assert set(resold.values_list("gpu_id", flat=True)) == held
    plain = Allocation.objects.filter(layer=0).exclude(lease=backing)
    assert plain.count() == 8 and set(plain.values_list("gpu_id", flat=True)).isdisjoint(held)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.layer = b.layer AND a.period && b.period"
        )
        assert cursor.fetchone()[0] == 0
