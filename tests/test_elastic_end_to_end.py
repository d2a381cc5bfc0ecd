"""Proof of elastic leases (issue 20 "Proof / Elastic"): the real agent CLI (`python -m agents ... --simulate 8
--load-curve FILE run`) reports telemetry to the live platform, its cards' utilisation following the curve while the
lease's workload runs on them, and the beat job's own function (`scheduler.elastic.scale_leases`, run here in real
time on a short cool-down) drives a lease from 2 cards to 8 and back to 2 within its bounds and cool-downs. With
capacity short (another customer holds 2 of the 8 cards) the rule waits and says so, and scales once they are free.
A schedule takes the lease to 0 cards and, when its window is over, the rule brings it back. Every step is a resize
('scaled' event with its reason and the utilisation that drove it) whose allocations never overlap another's on a card
(the exclusion constraint's own query) and are billed to the second from the workload's first running report."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing.metering import slots
from scheduler.elastic import scale_leases
from scheduler.elastic_history import held_cards_series
from scheduler.models import Lease, LeaseEvent, ScalingRule
from scheduler.selectors import held_allocations
from tests.test_workloads_end_to_end import AgentProcess, _list, _provider_server
from workloads.models import Workload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

COOLDOWN = 8
RULE = {
    "min_gpus": 2,
    "max_gpus": 8,
    "target_utilization_pct": 60,
    "step_up": 2,
    "step_down": 2,
    "cooldown_seconds": COOLDOWN,
}


def held(lease: Lease) -> int:
    return held_allocations(lease=lease, at=timezone.now()).count()


def drive(lease: Lease, agent: AgentProcess, condition, *, timeout: float = 120.0, what: str) -> None:
    """Run the beat job's function once a second until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scale_leases()
        if condition():
            return
        if agent.proc is not None and agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited early:\n{agent.output()}")
        time.sleep(1.0)
    rule = ScalingRule.objects.get(lease=lease)
    raise AssertionError(
        f"timed out waiting for {what}: {held(lease)} cards, rule {rule.status}: {rule.status_message}\n"
        f"agent log:\n{agent.output()}"
    )


def write_curve(path, text: str) -> None:
    path.write_text(text)


def test_a_simulated_load_drives_an_elastic_lease_up_and_down_waits_for_capacity_and_follows_its_schedule(
    live_server, alice, bob, charlie, tmp_path
):
    created = _provider_server(bob, runtime="docker")
    curve = tmp_path / "load.txt"
    write_curve(curve, "# warming up, then busy\n0:30\n4:95\n")
    agent = AgentProcess(tmp_path, live_server.url, created["enrollment_token"], "--load-curve", str(curve))
    offer = _list(created["id"])  # the server's cards are known once its agent enrolled
    agent.start()
    try:
        lease_body = {
            "plan": "card_hour",
            "gpu_count": 2,
            "offer": offer.pk,
            "workload": {"image": "ubuntu:24.04"},
            "scaling": RULE,
        }
        made = alice.api.post("/api/v1/leases/", lease_body, format="json")
        assert made.status_code == 201, made.content
        lease = Lease.objects.get(pk=made.json()["id"])
        assert made.json()["scaling"]["max_gpus"] == 8
        # Another customer holds 2 of the 8 cards: at most 6 are free for alice.
        other = charlie.api.post(
            "/api/v1/leases/", {"plan": "card_hour", "gpu_count": 2, "offer": offer.pk}, format="json"
        )
        assert other.status_code == 201, other.content

        # Busy: 2 -> 4 -> 6, then it wants 8 and waits for capacity, saying so, without a resize.
        drive(lease, agent, lambda: held(lease) == 6, what="6 cards")
        drive(
            lease,
            agent,
            lambda: ScalingRule.objects.get(lease=lease).status == ScalingRule.Status.WAITING_CAPACITY,
            what="the rule waiting for capacity",
        )
        rule = ScalingRule.objects.get(lease=lease)
        assert rule.desired_gpus == 8 and "Waiting for 2 more free cards" in rule.status_message
        waiting = alice.api.get(f"/api/v1/leases/{lease.pk}/scaling/").json()
        assert waiting["status"] == "waiting_capacity" and waiting["desired_gpus"] == 8
        assert held(lease) == 6
        # The cards come free: the next runs scale to 8.
        assert charlie.api.post(f"/api/v1/leases/{other.json()['id']}/end/").status_code == 200
        drive(lease, agent, lambda: held(lease) == 8, what="8 cards once capacity is free")
        for _ in range(3):  # at its maximum it stays there
            scale_leases()
            time.sleep(1)
        assert held(lease) == 8

        # Quiet: the curve falls to 10 % and the rule takes it back to its minimum of 2, in steps of 2.
        write_curve(curve, "0:95\n3:10\n")
        drive(lease, agent, lambda: held(lease) == 2, what="back to 2 cards")
        for _ in range(COOLDOWN + 3):  # never below its minimum
            scale_leases()
            time.sleep(1)
        assert held(lease) == 2

        events = list(lease.events.filter(kind__in=[LeaseEvent.Kind.SCALED, LeaseEvent.Kind.RESIZED]).order_by("id"))
        steps = [(e.data["from_count"], e.data["to_count"]) for e in events]
        assert steps == [(2, 4), (4, 6), (6, 8), (8, 6), (6, 4), (4, 2)], steps
        assert all(e.kind == LeaseEvent.Kind.SCALED for e in events), "every step is the rule's resize"
        for event in events:
            data = event.data
            if data["to_count"] > data["from_count"]:
                assert data["reason"] == "utilization_high" and data["utilization_pct"] >= 70, data
            else:
                assert data["reason"] == "utilization_low" and data["utilization_pct"] <= 40, data
            assert 2 <= data["to_count"] <= 8 and abs(data["to_count"] - data["from_count"]) == 2
        gaps = [(b.at - a.at).total_seconds() for a, b in zip(events, events[1:], strict=False)]
        assert min(gaps) >= COOLDOWN, gaps

        # A schedule that allows 0 cards in this minute takes it to 0 at once; when the minute is over it comes back.
        while timezone.now().second >= 45:  # room for the steps below inside one minute
            time.sleep(1)
        now = timezone.now()
        window = {"cron": f"{now.minute} {now.hour} * * *", "max_gpus": 0}
        put = alice.api.put(
            f"/api/v1/leases/{lease.pk}/scaling/", {**RULE, "min_gpus": 0, "schedule": [window]}, format="json"
        )
        assert put.status_code == 200, put.content
        scale_leases()
        lease.refresh_from_db()
        assert held(lease) == 0 and lease.state == "active" and lease.gpu_count == 0
        assert ScalingRule.objects.get(lease=lease).status == ScalingRule.Status.SCALING
        last = lease.events.order_by("-id").first()
        assert last.kind == LeaseEvent.Kind.SCALED and last.data["reason"] == "schedule"
        assert (last.data["from_count"], last.data["to_count"]) == (2, 0)
        drive(lease, agent, lambda: held(lease) >= 1, timeout=90, what="back from 0 after the window")
        back = lease.events.order_by("-id").first()
        assert back.kind == LeaseEvent.Kind.SCALED and back.data["from_count"] == 0 and back.data["to_count"] == 1
        assert back.at.replace(second=0, microsecond=0) > now.replace(second=0, microsecond=0)
    finally:
        agent.stop()

    lease.refresh_from_db()
    until = timezone.now()
    # The invariants of every step. No card held twice at once (the exclusion constraint's own condition).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b ON a.gpu_id = b.gpu_id "
            "AND a.id < b.id AND a.layer = b.layer AND a.period && b.period"
        )
        assert cursor.fetchone()[0] == 0
    # The cards held over time, from the allocation periods, change exactly at the events and by them.
    series = held_cards_series(lease=lease, since=lease.start_at - timedelta(seconds=1), until=until)
    counts = [p["gpus"] for p in series]
    assert counts[1:-1] == [2, 4, 6, 8, 6, 4, 2, 0, 1], counts
    event_times = [e.at for e in lease.events.filter(kind=LeaseEvent.Kind.SCALED).order_by("id")]
    assert [p["t"] for p in series[2:-1]] == event_times
    # Billed per second: each allocation's slots add up to the seconds it was held from the workload's first running
    # report on its server, to the microsecond.
    started = {w.server_id: w.started_at for w in Workload.objects.filter(lease=lease)}
    assert all(started.values()), "the workload ran"
    billed: dict[int, Decimal] = {}
    for slot in slots(since=lease.start_at, until=until, lease_id=lease.pk):
        assert slot.down_seconds == 0
        billed[slot.allocation_id] = billed.get(slot.allocation_id, Decimal(0)) + slot.seconds
    for allocation in lease.allocations.all():
        begin = max(allocation.period.lower, started[allocation.server_id])
        end = min(allocation.period.upper or until, until)
        expected = max(Decimal((end - begin).total_seconds()), Decimal(0)).quantize(Decimal("0.000001"))
        assert abs(billed.get(allocation.pk, Decimal(0)) - expected) <= Decimal("0.000002"), allocation.pk
    assert sum(billed.values()) > 0
