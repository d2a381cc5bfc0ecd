"""A customer pays for what was usable (DESIGN.md): a card-hour lease with a workload is charged from its first
`running` report, live (GET .../usage/) and metered (billing.metering.meter) alike; contracts and leases without a
workload are charged from their start as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing.metering import meter
from billing.models import UsageRecord
from tests.workloads.conftest import add_key, enrolled_box, rent, rent_with_workload

T0 = datetime(2026, 3, 10, 2, 20, tzinfo=UTC)  # 10:20 on the platform clock (Asia/Shanghai)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def usage(persona, lease_id: int) -> dict:
    response = persona.api.get(f"/api/v1/leases/{lease_id}/usage/")
    assert response.status_code == 200, response.content
    return response.json()


def run(box, lease: dict, ports: dict | None = None) -> None:
    [item] = [i for i in box.agent.desired()["workloads"] if i["lease"] == lease["id"]]
    box.agent.report([{"id": item["id"], "state": "running", "ports": ports or {"22": 40022}}])


def test_a_card_hour_workload_is_charged_from_its_running_report_not_from_allocation(clock, alice, box):
    end_at = (T0 + timedelta(hours=4)).isoformat()
    with_workload = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=2, end_at=end_at)
    plain = rent(alice, gpu_count=2, end_at=end_at).json()
    assert plain["workloads"] == []
    box.agent.desired()
    box.agent.report([{"id": with_workload["workloads"][0]["id"], "state": "pulling"}])
    clock.move_to(T0 + timedelta(minutes=5))
    assert Decimal(usage(alice, with_workload["id"])["amount"]) == 0
    run(box, with_workload)
    started = alice.api.get(f"/api/v1/leases/{with_workload['id']}/").json()["workloads"][0]["started_at"]
    assert datetime.fromisoformat(started) == T0 + timedelta(minutes=5)

    clock.move_to(T0 + timedelta(minutes=65))
    live = usage(alice, with_workload["id"])
    # 2 cards x 60 min running x 2.50 an hour; the plain lease pays its 65 minutes since allocation.
    assert Decimal(live["amount"]) == Decimal("5.00") and Decimal(live["seconds"]) == 2 * 60 * 60
    assert Decimal(usage(alice, plain["id"])["amount"]) == Decimal("5.42")  # 2 x 65 min x 2.50 / 60

    clock.move_to(T0 + timedelta(minutes=100))  # 12:00 on the platform clock
    before = usage(alice, with_workload["id"])
    assert meter() > 0
    after = usage(alice, with_workload["id"])
    assert after["amount"] == before["amount"] == "7.92"  # 2 x 95 min x 2.50 / 60
    records = UsageRecord.objects.filter(lease_id=with_workload["id"])
    assert min(r.start for r in records) == T0 + timedelta(minutes=5)
    assert sum(r.seconds for r in records) == 2 * 95 * 60
    plain_records = UsageRecord.objects.filter(lease_id=plain["id"])
    assert min(r.start for r in plain_records) == T0
    assert sum(r.seconds for r in plain_records) == 2 * 100 * 60


def test_a_contract_with_a_workload_is_charged_from_its_start(clock, alice, bob, h100, box):
    twin = enrolled_box(bob, h100, name="twin", prefix="7w1n")
    end_at = (T0 + timedelta(days=20)).isoformat()
    contract = rent_with_workload(alice, plan="server_month", servers=1, end_at=end_at, server=box.server_id)
    bare = rent(alice, plan="server_month", servers=1, end_at=end_at, server=twin.server_id).json()
    box.agent.desired()
    clock.move_to(T0 + timedelta(minutes=5))
    run(box, contract)
    clock.move_to(T0 + timedelta(minutes=65))
    charged = usage(alice, contract["id"])
    assert Decimal(charged["seconds"]) == 8 * 65 * 60
    assert Decimal(charged["amount"]) > 0
    assert charged["amount"] == usage(alice, bare["id"])["amount"]


def test_a_card_hour_workload_that_never_runs_costs_nothing_while_it_waits(clock, alice, box):
    lease = rent_with_workload(alice, gpu_count=8)
    box.agent.desired()
    clock.move_to(T0 + timedelta(minutes=3))
    box.agent.report([{"id": lease["workloads"][0]["id"], "state": "pulling", "progress": 90}])
    clock.move_to(T0 + timedelta(minutes=100))
    assert meter() >= 0
    assert usage(alice, lease["id"])["amount"] == "0.00"
    assert not UsageRecord.objects.filter(lease_id=lease["id"]).exists()
