"""A lease whose workload never becomes usable fails, uncharged: a `failed` report before it ever ran, or no
`running` report within SUANLI_WORKLOAD_START_TIMEOUT_SECONDS (workloads_check, the beat job)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command

from billing.metering import meter
from billing.models import UsageRecord
from scheduler.models import Allocation
from tests.workloads.conftest import add_key, enrolled_box, rent_with_workload
from workloads.checks import workloads_check

T0 = datetime(2026, 3, 10, 2, 20, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def lease_of(persona, lease_id: int) -> dict:
    return persona.api.get(f"/api/v1/leases/{lease_id}/").json()


def events_of(persona, lease_id: int) -> list[dict]:
    return persona.api.get(f"/api/v1/leases/{lease_id}/events/").json()["results"]


def test_a_workload_that_fails_before_it_ever_ran_fails_the_lease_uncharged(clock, alice, box):
    lease = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=4)
    wid = box.agent.desired()["workloads"][0]["id"]
    clock.move_to(T0 + timedelta(minutes=2))
    box.agent.report([{"id": wid, "state": "pulling", "progress": 10}])
    clock.move_to(T0 + timedelta(minutes=4))
    box.agent.report([{"id": wid, "state": "failed", "message": "manifest unknown", "exit_code": None}])
    failed = lease_of(alice, lease["id"])
    assert failed["state"] == "failed" and failed["gpus"] == []
    assert datetime.fromisoformat(failed["ended_at"]) == T0 + timedelta(minutes=4)
    assert failed["workloads"][0]["state"] == "failed" and failed["workloads"][0]["message"] == "manifest unknown"
    [event] = [e for e in events_of(alice, lease["id"]) if e["kind"] == "failed"]
    assert "manifest unknown" in event["data"]["reason"]
    assert not Allocation.objects.filter(lease_id=lease["id"], period__upper_inf=True).exists()
    clock.move_to(T0 + timedelta(hours=2))
    meter()
    usage = alice.api.get(f"/api/v1/leases/{lease['id']}/usage/").json()
    assert usage["amount"] == "0.00" and float(usage["seconds"]) == 0
    assert not UsageRecord.objects.filter(lease_id=lease["id"]).exists()
    # Nothing is left to do for it: it is no longer in the desired state, and restarting it is a conflict.
    assert box.agent.desired()["workloads"] == []
    response = alice.api.post(f"/api/v1/leases/{lease['id']}/workloads/{wid}/restart/")
    assert response.status_code == 409


def test_a_workload_that_fails_after_running_keeps_the_lease_and_its_charge(clock, alice, box):
    lease = rent_with_workload(alice, gpu_count=1)
    wid = box.agent.desired()["workloads"][0]["id"]
    clock.move_to(T0 + timedelta(minutes=1))
    box.agent.report([{"id": wid, "state": "running", "ports": {"22": 40022}}])
    clock.move_to(T0 + timedelta(minutes=31))
    box.agent.report([{"id": wid, "state": "failed", "message": "OOM", "exit_code": 137}])
    after = lease_of(alice, lease["id"])
    assert after["state"] == "active" and len(after["gpus"]) == 1
    assert after["workloads"][0]["state"] == "failed" and after["workloads"][0]["exit_code"] == 137
    assert alice.api.get(f"/api/v1/leases/{lease['id']}/usage/").json()["amount"] == "1.25"  # 30 min x 2.50


def test_the_start_timeout_fails_a_lease_whose_workload_never_ran_and_leaves_running_ones(
    clock, alice, charlie, box, settings
):
    settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS = 600
    stuck = rent_with_workload(alice, gpu_count=2)
    started = rent_with_workload(charlie, gpu_count=2)
    items = {i["lease"]: i["id"] for i in box.agent.desired()["workloads"]}
    clock.move_to(T0 + timedelta(minutes=3))
    box.agent.report(
        [
            {"id": items[stuck["id"]], "state": "pulling", "progress": 5},
            {"id": items[started["id"]], "state": "running"},
        ]
    )
    clock.move_to(T0 + timedelta(seconds=599))
    assert workloads_check().items() >= {"failed": 0, "drained_unclean": 0}.items()
    assert lease_of(alice, stuck["id"])["state"] == "active"

    clock.move_to(T0 + timedelta(seconds=601))
    assert workloads_check()["failed"] == 1
    failed = lease_of(alice, stuck["id"])
    assert failed["state"] == "failed" and failed["gpus"] == []
    [event] = [e for e in events_of(alice, stuck["id"]) if e["kind"] == "failed"]
    assert "not running within 10 minutes" in event["data"]["reason"]
    assert lease_of(charlie, started["id"])["state"] == "active"
    assert workloads_check()["failed"] == 0  # idempotent
    call_command("check_workloads", stdout=open("/dev/null", "w"))  # noqa: SIM115 - the same job by hand
    assert lease_of(alice, stuck["id"])["state"] == "failed"
    assert alice.api.get(f"/api/v1/leases/{stuck['id']}/usage/").json()["amount"] == "0.00"
    assert lease_of(alice, stuck["id"])["workloads"][0]["started_at"] is None


def test_the_start_timeout_leaves_contracts_alone(clock, alice, box, settings):
    settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS = 600
    contract = rent_with_workload(alice, plan="server_month", servers=1, end_at=(T0 + timedelta(days=30)).isoformat())
    box.agent.desired()
    clock.move_to(T0 + timedelta(hours=1))
    assert workloads_check()["failed"] == 0
    assert lease_of(alice, contract["id"])["state"] == "active"


def test_a_lease_that_ran_is_not_failed_when_its_workload_on_a_server_it_grew_onto_does_not_start(
    clock, alice, bob, box, h100, settings
):
    settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS = 600
    boxes = {box.server_id: box}
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    boxes[other.server_id] = other
    lease = rent_with_workload(alice, gpu_count=8)
    [first] = {g["server"] for g in lease["gpus"]}
    second = next(s for s in boxes if s != first)
    wid = boxes[first].agent.desired()["workloads"][0]["id"]
    clock.move_to(T0 + timedelta(minutes=1))
    boxes[first].agent.report([{"id": wid, "state": "running"}])
    clock.move_to(T0 + timedelta(minutes=2))
    grown = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 10}, format="json")
    assert grown.status_code == 200, grown.content
    [new] = boxes[second].agent.desired()["workloads"]
    assert new["lease"] == lease["id"] and len(new["gpus"]) == 2

    clock.move_to(T0 + timedelta(minutes=30))
    assert workloads_check()["failed"] == 0
    boxes[second].agent.report([{"id": new["id"], "state": "failed", "message": "no space left on device"}])
    after = lease_of(alice, lease["id"])
    assert after["state"] == "active" and len(after["gpus"]) == 10
    states = {w["server"]: w["state"] for w in after["workloads"]}
    assert states == {first: "running", second: "failed"}
    # Only the cards whose workload ran are charged: 8 cards x 29 minutes x 2.50 an hour.
    assert alice.api.get(f"/api/v1/leases/{lease['id']}/usage/").json()["amount"] == "9.67"
