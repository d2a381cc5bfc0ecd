"""Resale seen by a careless client (issue 20's review): retries of the reseller's writes are harmless."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from inventory import telemetry
from inventory.models import Gpu
from scheduler import resale
from scheduler.elastic_history import lease_scaling_history
from scheduler.models import Lease
from scheduler.selectors import lease_telemetry
from scheduler.services import lease_create, lease_end
from tests.conftest import Persona, make_persona
from tests.factories import GpuModelFactory, OrganizationFactory, online_server
from tests.scheduler.test_resale import contract, rent, resale_offer


@pytest.fixture
def broker(db) -> Persona:
    return make_persona(OrganizationFactory(name="Dana Compute Brokers"), email="dana@example.com")


def test_a_reclaim_retried_with_its_idempotency_key_takes_the_cards_back_once(broker, alice, charlie, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"], interruptible_prices={"card_hour": "3.0000"})
    first = rent(alice, offer=offer["id"], gpu_count=1, interruptible=True).json()
    second = rent(charlie, offer=offer["id"], gpu_count=1, interruptible=True).json()
    url = f"/api/v1/offers/{offer['id']}/reclaim/"
    headers = {"HTTP_IDEMPOTENCY_KEY": "reclaim-1"}
    answer = broker.api.post(url, {"gpu_count": 1}, format="json", **headers)
    assert answer.status_code == 200, answer.content
    again = broker.api.post(url, {"gpu_count": 1}, format="json", **headers)
    assert again.status_code == 200 and again.json() == answer.json()
    told = Lease.objects.filter(pk__in=[first["id"], second["id"]], preempt_at__isnull=False)
    assert told.count() == 1
    # The same key with another body is refused, and does nothing.
    other = broker.api.post(url, {"gpu_count": 2}, format="json", **headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert told.count() == 1
    # A new key is a new reclaim.
    fresh = broker.api.post(url, {"gpu_count": 1}, format="json", HTTP_IDEMPOTENCY_KEY="reclaim-2")
    assert fresh.status_code == 200 and told.count() == 2


def test_the_contracts_telemetry_leaves_out_the_time_a_renter_held_its_card(broker, alice, bob):
    """The broker's contract holds the card while it is resold, but the samples of that time are the renter's."""
    server = online_server(organization=bob.org, gpu_model=GpuModelFactory(slug="resale-tm"), name="resale-tm")
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)
    backing = lease_create(org=broker.org, plan="server_month", servers=1, end_at=start + timedelta(days=30), now=start)
    offer = resale.resale_offer_create(org=broker.org, lease=backing, prices={"card_hour": Decimal(4)}, now=start)
    renter = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer, now=start + timedelta(minutes=10))
    lease_end(lease=renter, now=start + timedelta(minutes=20))
    [card] = Gpu.objects.filter(allocations__lease=renter)
    moments = [start + timedelta(minutes=m, seconds=5) for m in (5, 15, 25)]
    telemetry.copy_samples(
        [(at, card.pk, server.pk, 50.0, 4096, 60.0, 300.0, 1400, 0, 0, json.dumps({})) for at in moments]
    )
    query = {"since": start, "until": start + timedelta(minutes=30), "step": 30, "now": start + timedelta(minutes=31)}

    def seen(lease) -> list:
        [row] = [g for g in lease_telemetry(lease=lease, **query)["gpus"] if g["uuid"] == card.uuid]
        return sorted(p["t"] for p in row["points"])

    minute = {m: (start + timedelta(minutes=m)).isoformat() for m in (5, 15, 25)}
    assert seen(renter) == [minute[15]]
    assert seen(backing) == [minute[5], minute[25]]


def test_the_contracts_utilisation_chart_leaves_out_the_time_a_renter_held_its_card(broker, alice, bob):
    server = online_server(organization=bob.org, gpu_model=GpuModelFactory(slug="resale-ch"), name="resale-ch")
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)
    backing = lease_create(org=broker.org, plan="server_month", servers=1, end_at=start + timedelta(days=30), now=start)
    offer = resale.resale_offer_create(org=broker.org, lease=backing, prices={"card_hour": Decimal(4)}, now=start)
    renter = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer, now=start + timedelta(minutes=10))
    lease_end(lease=renter, now=start + timedelta(minutes=20))
    [card] = Gpu.objects.filter(allocations__lease=renter)
    rows = [
        (
            start + timedelta(minutes=m, seconds=5),
            gpu.pk,
            server.pk,
            99.0 if gpu == card else 10.0,
            1,
            1.0,
            1.0,
            1,
            0,
            0,
            "{}",
        )
        for gpu in Gpu.objects.filter(server=server)
        for m in (5, 15)
    ]
    telemetry.copy_samples(rows)
    history = lease_scaling_history(
        lease=backing, since=start, until=start + timedelta(minutes=30), step=30, now=start + timedelta(minutes=31)
    )
    by_minute = {p["t"]: (p["utilization_pct"], p["cards"]) for p in history["utilization"]}
    assert by_minute[(start + timedelta(minutes=5)).isoformat()] == (pytest.approx((99.0 + 7 * 10.0) / 8, abs=0.01), 8)
    assert by_minute[(start + timedelta(minutes=15)).isoformat()] == (10.0, 7)
