"""An elastic lease with a workload (issue 20): a scaling step is a resize, so the agent's desired state follows it:
the workload runs on the cards held, leaves the server at 0 cards (the lease stays active and is not failed for it),
and comes back with the cards when the rule grows the lease again; and a growth that lands on cards dearer than the
price ceiling is undone."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from inventory.models import Gpu
from scheduler import elastic, services
from scheduler.models import Allocation, LeaseEvent, ScalingRule
from tests.factories import GpuModelFactory, online_server
from tests.workloads.conftest import H100, Box, enrolled_box, rent_with_workload
from workloads.checks import workloads_check


@pytest.fixture
def box(bob) -> Box:
    """Bob's enrolled 8-card server running containers, with its agent."""
    model = GpuModelFactory(slug="elastic-wl-h100", name="Elastic WL H100", nvml_names=[H100])
    return enrolled_box(bob, model, name="elastic-box", prefix="e1a5")


def items_of(desired: dict, lease_id: int) -> list[dict]:
    return [item for item in desired["workloads"] if item["lease"] == lease_id]


def held(lease_id: int) -> int:
    return Allocation.objects.filter(lease_id=lease_id, period__contains=timezone.now()).count()


def test_the_workload_follows_the_cards_down_to_0_and_back(alice, box):
    scaling = {"min_gpus": 0, "max_gpus": 4, "queue_depth_per_gpu": 1, "step_up": 4, "step_down": 4}
    lease = rent_with_workload(alice, gpu_count=2, scaling={**scaling, "cooldown_seconds": 0})
    lease_id = lease["id"]
    desired = box.agent.desired()
    [item] = items_of(desired, lease_id)
    assert len(item["gpus"]) == 2
    box.agent.report([{"id": item["id"], "state": "running"}], workloads_version=desired["version"])

    elastic.queue_depth_report(services.Lease.objects.get(pk=lease_id), 0)
    assert elastic.scale_leases()["scaled"] == 1
    assert held(lease_id) == 0
    gone = box.agent.desired()
    assert items_of(gone, lease_id) == []
    box.agent.report([{"id": item["id"], "state": "cleaned"}], workloads_version=gone["version"])
    assert not Gpu.objects.filter(server_id=box.server_id, needs_cleaning=True).exists()
    # Long after its start timeout, a lease whose workload ran is not failed for holding no cards.
    assert workloads_check(now=timezone.now() + timedelta(hours=2))["failed"] == 0
    assert services.Lease.objects.get(pk=lease_id).state == "active"

    elastic.queue_depth_report(services.Lease.objects.get(pk=lease_id), 3)
    assert elastic.scale_leases()["scaled"] == 1
    back = box.agent.desired()
    [again] = items_of(back, lease_id)
    assert len(again["gpus"]) == 3 and again["id"] == item["id"]  # the same workload row, on the same server
    body = alice.api.get(f"/api/v1/leases/{lease_id}/").json()
    assert len(body["gpus"]) == 3 and body["scaling"]["desired_gpus"] == 3
    reasons = [e.data["reason"] for e in LeaseEvent.objects.filter(lease_id=lease_id, kind="scaled").order_by("id")]
    assert reasons == ["queue_depth", "queue_depth"]


def test_a_growth_onto_dearer_cards_than_the_ceiling_allows_is_undone(alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=2, offer={"card_hour_price": Decimal("2.5000")})
    online_server(organization=bob.org, gpu_model=h100, gpus=8, offer={"card_hour_price": Decimal("10.0000")})
    lease = services.lease_create(
        org=alice.org,
        plan="card_hour",
        gpu_count=2,
        scaling={"max_gpus": 4, "queue_depth_per_gpu": 1, "step_up": 2, "max_price_per_hour": Decimal("10")},
    )
    assert set(Allocation.objects.filter(lease=lease).values_list("unit_price", flat=True)) == {Decimal("2.5")}
    elastic.queue_depth_report(lease, 4)
    assert elastic.scale_leases()["refused"] == 1
    rule = ScalingRule.objects.get(lease=lease)
    assert rule.status == "at_price_ceiling" and "cost more" in rule.status_message
    lease.refresh_from_db()
    assert held(lease.pk) == 2 and lease.gpu_count == 2 and list(lease.price_book.values()) == ["2.500000"]
    assert not LeaseEvent.objects.filter(lease=lease, kind="scaled").exists()
