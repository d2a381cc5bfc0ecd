"""run_leases, resize, the event log, preemption and failover."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import time_machine
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from inventory.models import Gpu, GpuHealthEvent, Server
from scheduler import lifecycle
from scheduler.models import Allocation, Lease, LeaseEvent
from scheduler.tasks import run_leases_task
from tests.factories import online_server


def rent(persona, **body):
    body.setdefault("plan", "card_hour")
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def kinds(lease_id: int) -> list[str]:
    return list(LeaseEvent.objects.filter(lease_id=lease_id).order_by("id").values_list("kind", flat=True))


def test_run_leases_starts_due_reservations_and_ends_expired_leases_once(alice, rack):
    now = timezone.now()
    reservation = rent(
        alice,
        gpu_count=2,
        start_at=(now + timedelta(hours=1)).isoformat(),
        end_at=(now + timedelta(hours=3)).isoformat(),
    )
    with time_machine.travel(now + timedelta(hours=1, minutes=1)):
        call_command("run_leases")
        call_command("run_leases")
    assert Lease.objects.get(pk=reservation["id"]).state == "active"
    with time_machine.travel(now + timedelta(hours=3, minutes=1)):
        run_leases_task()
        run_leases_task()
    lease = Lease.objects.get(pk=reservation["id"])
    assert lease.state == "ended" and lease.ended_at == lease.end_at
    assert kinds(lease.pk) == ["created", "started", "ended"]


def test_resize_grows_on_the_same_server_and_shrinks_by_closing_periods(alice, rack):
    lease = rent(alice, gpu_count=2)
    server = lease["gpus"][0]["server"]
    grown = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 6}, format="json")
    assert grown.status_code == 200, grown.content
    assert len(grown.json()["gpus"]) == 6 and {g["server"] for g in grown.json()["gpus"]} == {server}
    shrunk = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 1}, format="json")
    assert shrunk.status_code == 200 and len(shrunk.json()["gpus"]) == 1
    assert Allocation.objects.filter(lease_id=lease["id"], close_reason="resized").count() == 5
    too_many = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 30}, format="json")
    assert too_many.status_code == 409 and too_many.json()["error"]["code"] == "no_capacity"
    assert len(alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["gpus"]) == 1
    events = alice.api.get(f"/api/v1/leases/{lease['id']}/events/").json()["results"]
    assert [e["kind"] for e in events] == ["created", "resized", "resized"]
    assert events[1]["data"]["from_count"] == 2 and events[1]["data"]["to_count"] == 6


def test_only_card_hour_leases_resize(alice, rack):
    end = (timezone.now() + timedelta(days=30)).isoformat()
    lease = rent(alice, plan="server_month", servers=1, end_at=end)
    response = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 2}, format="json")
    assert response.status_code == 400


@override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=0)
def test_an_on_demand_request_preempts_interruptible_leases_at_once_with_no_notice(alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    spot = rent(charlie, gpu_count=3, interruptible=True)
    firm = rent(alice, gpu_count=1)
    assert rent(alice, gpu_count=3)["state"] == "active"
    assert Lease.objects.get(pk=spot["id"]).state == "preempted"
    assert Lease.objects.get(pk=firm["id"]).state == "active"
    assert kinds(spot["id"]) == ["created", "preemption_notice", "preempted"]


def test_preemption_gives_notice_and_never_touches_on_demand_leases(alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    now = timezone.now()
    spot = rent(charlie, gpu_count=2, interruptible=True)
    rent(alice, gpu_count=2)
    with time_machine.travel(now, tick=False):
        taken = rent(alice, gpu_count=2)
    cut = now + timedelta(seconds=120)
    assert all(a.period.lower == cut for a in Allocation.objects.filter(lease_id=taken["id"]))
    spot_lease = Lease.objects.get(pk=spot["id"])
    assert spot_lease.state == "active" and spot_lease.preempt_at == cut
    assert all(a.period.upper == cut for a in Allocation.objects.filter(lease_id=spot["id"]))
    # Nothing is left that only an on-demand lease holds: a third on-demand request is refused.
    assert alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json").status_code == 409
    with time_machine.travel(cut + timedelta(seconds=1)):
        lifecycle.leases_run()
    assert Lease.objects.get(pk=spot["id"]).state == "preempted"
    assert kinds(spot["id"]) == ["created", "preemption_notice", "preempted"]


def test_an_interruptible_request_never_preempts(alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=2)
    rent(charlie, gpu_count=2, interruptible=True)
    response = alice.api.post(
        "/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1, "interruptible": True}, format="json"
    )
    assert response.status_code == 409


def _fail(gpu: Gpu) -> None:
    GpuHealthEvent.objects.create(
        gpu=gpu, server=gpu.server, at=timezone.now(), from_health="healthy", to_health="failed", reason="XID 79"
    )
    Gpu.objects.filter(pk=gpu.pk).update(health="failed")


def test_a_failed_card_is_replaced_on_the_same_server_and_the_event_is_handled(alice, rack):
    lease = rent(alice, gpu_count=2)
    gpu = Gpu.objects.get(uuid=lease["gpus"][0]["uuid"])
    _fail(gpu)
    counts = lifecycle.leases_run()
    assert counts["replaced"] == 1
    held = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["gpus"]
    assert len(held) == 2 and gpu.uuid not in {g["uuid"] for g in held}
    assert {g["server"] for g in held} == {gpu.server_id}
    assert not GpuHealthEvent.objects.filter(handled_at__isnull=True).exists()
    assert kinds(lease["id"])[-1] == "failover"
    assert lifecycle.leases_run()["replaced"] == 0  # handled once


def test_without_a_spare_the_shortfall_is_recorded_and_pflops_drop(alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    end = (timezone.now() + timedelta(days=365)).isoformat()
    lease = rent(alice, plan="pflops_year", pflops="3.9", end_at=end)
    assert lease["delivered_pflops"] == "3.958"
    _fail(Gpu.objects.get(uuid=lease["gpus"][0]["uuid"]))
    lifecycle.failover_run()
    row = Lease.objects.get(pk=lease["id"])
    assert row.shortfall_gpus == 1 and row.delivered_pflops == Decimal("2.969")
    assert kinds(lease["id"])[-1] == "shortfall"


def test_leases_on_an_unreachable_server_move_to_a_healthy_one(alice, bob, h100):
    first = online_server(organization=bob.org, gpu_model=h100, gpus=2, name="a")
    online_server(organization=bob.org, gpu_model=h100, gpus=2, name="b")
    lease = rent(alice, gpu_count=2, server=first.pk)
    Server.objects.filter(pk=first.pk).update(status="unreachable")
    assert lifecycle.failover_run()["replaced"] == 2
    held = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["gpus"]
    assert len(held) == 2 and first.pk not in {g["server"] for g in held}
    assert lifecycle.failover_run() == {"replaced": 0, "shortfalls": 0}
