"""Stopping and starting a card-hour lease (API.md, Volumes): stop releases the cards and keeps the lease's server
(where its volumes are), start takes cards on that same server again or answers 409 no_capacity, through the same
admission as a new lease; no card time is charged while stopped; the workload comes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from accounts.errors import InvalidTransition
from accounts.models import Role
from billing import ledger
from billing.metering import lease_usage, meter
from billing.models import UsageRecord
from inventory.models import Gpu
from scheduler import lifecycle, services
from scheduler.models import TRANSITIONS, Allocation, Lease, LeaseEvent, LeaseState, check_transition
from tests.conftest import make_persona
from tests.factories import GpuModelFactory, online_server
from tests.workloads.conftest import H100, add_key, enrolled_box, rent_with_workload
from workloads.models import Workload

D = Decimal
T0 = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)  # 10:00 on the platform clock (Asia/Shanghai): an hour's start
HOUR = timedelta(hours=1)


def kinds(lease_id: int) -> list[str]:
    return list(LeaseEvent.objects.filter(lease_id=lease_id).order_by("id").values_list("kind", flat=True))


def cards_of(body: dict) -> list[tuple[int, str]]:
    return sorted((gpu["server"], gpu["uuid"]) for gpu in body["gpus"])


def post(persona, lease_id: int, verb: str, **headers):
    return persona.api.post(f"/api/v1/leases/{lease_id}/{verb}/", format="json", **headers)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def servers(bob):
    """Bob's two online 4-card servers at 2.50 a card-hour."""
    model = GpuModelFactory(slug="stop-h100", name="Stop H100")
    return [online_server(organization=bob.org, gpu_model=model, gpus=4, name=f"stop-{i}") for i in range(2)]


def rent(persona, **body) -> dict:
    body.setdefault("plan", "card_hour")
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


# --- the state machine ------------------------------------------------------------------------------------


def test_every_state_move_is_allowed_or_refused_as_designed():
    allowed = {
        ("scheduled", "active"),
        ("scheduled", "cancelled"),
        ("scheduled", "preempted"),
        ("active", "ended"),
        ("active", "preempted"),
        ("active", "failed"),
        ("active", "stopped"),
        ("stopped", "active"),
        ("stopped", "ended"),
    }
    states = [state.value for state in LeaseState]
    assert "stopped" in states and set(TRANSITIONS) == set(states)
    for current in states:
        for target in states:
            if (current, target) in allowed:
                check_transition(current, target)
            else:
                with pytest.raises(InvalidTransition):
                    check_transition(current, target)


# --- stop and start ---------------------------------------------------------------------------------------


def test_stop_releases_the_cards_keeps_the_server_and_start_takes_the_same_cards_again(alice, servers):
    lease = rent(alice, gpu_count=2)  # placed by filters: no server named
    assert Lease.objects.get(pk=lease["id"]).server_id is None
    before = cards_of(lease)
    [server_id] = {server for server, _ in before}

    stopped = post(alice, lease["id"], "stop")
    assert stopped.status_code == 200, stopped.content
    assert stopped.json()["state"] == "stopped" and stopped.json()["gpus"] == []
    row = Lease.objects.get(pk=lease["id"])
    assert (row.state, row.server_id, row.gpu_count, row.ended_at) == ("stopped", server_id, 2, None)
    closed = Allocation.objects.filter(lease_id=lease["id"])
    assert closed.count() == 2 and set(closed.values_list("close_reason", flat=True)) == {"stopped"}
    assert all(a.period.upper is not None for a in closed)
    event = LeaseEvent.objects.filter(lease_id=lease["id"]).last()
    assert event.kind == "stopped" and event.data["server"] == server_id and len(event.data["gpus"]) == 2

    started = post(alice, lease["id"], "start")
    assert started.status_code == 200, started.content
    assert started.json()["state"] == "active" and cards_of(started.json()) == before
    assert kinds(lease["id"]) == ["created", "stopped", "restarted"]
    assert Allocation.objects.filter(lease_id=lease["id"]).count() == 4


def test_start_answers_no_capacity_when_another_lease_took_the_cards_and_never_moves_servers(alice, charlie, servers):
    lease = rent(alice, gpu_count=3, server=servers[0].pk)
    assert post(alice, lease["id"], "stop").status_code == 200
    taker = rent(charlie, gpu_count=2, server=servers[0].pk)  # 2 of its 4 cards: 2 left, 3 needed
    refused = post(alice, lease["id"], "start")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_capacity"
    row = Lease.objects.get(pk=lease["id"])
    assert row.state == "stopped" and row.server_id == servers[0].pk
    held = Allocation.objects.filter(lease_id=lease["id"], period__upper_inf=True)
    assert not held.exists(), "nothing held, and nothing on the other server with four free cards"
    assert kinds(lease["id"]) == ["created", "stopped"]

    assert charlie.api.post(f"/api/v1/leases/{taker['id']}/end/").status_code == 200
    started = post(alice, lease["id"], "start")
    assert started.status_code == 200, started.content
    assert {gpu["server"] for gpu in started.json()["gpus"]} == {servers[0].pk}


def test_no_card_time_is_charged_while_stopped(clock, alice, servers):
    lease = rent(alice, gpu_count=2)  # no workload: charged from allocation, 2 cards x 2.50 an hour
    clock.move_to(T0 + HOUR)
    assert post(alice, lease["id"], "stop").status_code == 200
    clock.move_to(T0 + 4 * HOUR)
    row = Lease.objects.get(pk=lease["id"])
    assert lease_usage(lease=row).amount == D("5.00"), "one hour of 2 cards, none of the three stopped hours"
    assert post(alice, lease["id"], "start").status_code == 200
    clock.move_to(T0 + 5 * HOUR)
    assert lease_usage(lease=row).amount == D("10.00")
    assert meter() > 0
    records = UsageRecord.objects.filter(lease_id=lease["id"])
    assert sum(r.seconds for r in records) == 2 * 2 * 3600
    assert not records.filter(slot_start__gte=T0 + HOUR, slot_start__lt=T0 + 4 * HOUR).exists()
    assert lease_usage(lease=row).amount == D("10.00"), "metered the same as shown live"


def test_start_goes_through_admission_a_prepaid_organisation_without_money_is_refused(clock, alice, servers):
    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=D(0), currency=alice.org.currency)
    ledger.adjustment_record(org=alice.org, amount=D("20.00"), currency=alice.org.currency, reference="WIRE-S1")
    lease = rent(alice, gpu_count=2)
    clock.move_to(T0 + 2 * HOUR)  # 10.00 spent of 20.00
    assert post(alice, lease["id"], "stop").status_code == 200
    ledger.adjustment_record(org=alice.org, amount=D("-9.00"), currency=alice.org.currency, reason="test")
    refused = post(alice, lease["id"], "start")  # 1.00 left; an hour of 2 cards needs 5.00
    assert refused.status_code == 402, refused.content
    assert refused.json()["error"]["code"] == "insufficient_funds"
    row = Lease.objects.get(pk=lease["id"])
    assert row.state == "stopped" and not Allocation.objects.filter(lease=row, period__upper_inf=True).exists()
    assert kinds(lease["id"]) == ["created", "stopped"]
    ledger.adjustment_record(org=alice.org, amount=D("10.00"), currency=alice.org.currency, reference="WIRE-S2")
    assert post(alice, lease["id"], "start").status_code == 200


def test_start_and_stop_replay_with_the_same_idempotency_key(alice, servers):
    lease = rent(alice, gpu_count=1)
    first = post(alice, lease["id"], "stop", HTTP_IDEMPOTENCY_KEY="stop-1")
    again = post(alice, lease["id"], "stop", HTTP_IDEMPOTENCY_KEY="stop-1")
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert post(alice, lease["id"], "stop").status_code == 409, "a second stop without the key is refused"
    first = post(alice, lease["id"], "start", HTTP_IDEMPOTENCY_KEY="start-1")
    again = post(alice, lease["id"], "start", HTTP_IDEMPOTENCY_KEY="start-1")
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert kinds(lease["id"]) == ["created", "stopped", "restarted"]
    assert Allocation.objects.filter(lease_id=lease["id"]).count() == 2


# --- what may not stop or start ---------------------------------------------------------------------------


def test_refusals_contracts_interruptible_reservations_spread_leases_and_wrong_states(alice, bob, servers):
    spread = rent(alice, gpu_count=6)  # on the two 4-card servers: 4 + 2
    assert len({gpu["server"] for gpu in spread["gpus"]}) == 2
    refused = post(alice, spread["id"], "stop")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_stoppable"
    assert post(alice, spread["id"], "end").json()["state"] == "ended"

    month = rent(alice, plan="server_month", servers=1, end_at=(datetime.now(UTC) + timedelta(days=40)).isoformat())
    refused = post(alice, month["id"], "stop")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_stoppable"

    spot = online_server(organization=bob.org, gpus=2, name="spot", offer={"card_hour_interruptible_price": D("1")})
    cheap = rent(alice, gpu_count=1, interruptible=True, server=spot.pk)
    refused = post(alice, cheap["id"], "stop")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_stoppable"

    later = datetime.now(UTC) + timedelta(hours=2)
    reservation = rent(alice, gpu_count=1, start_at=later.isoformat(), end_at=(later + HOUR).isoformat())
    refused = post(alice, reservation["id"], "stop")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_state"

    assert post(alice, month["id"], "start").json()["error"]["code"] == "invalid_state", "start of an active lease"
    for lease in (month, cheap, reservation, spread):
        assert "stopped" not in kinds(lease["id"])


def test_a_stopped_lease_cannot_resize_but_can_end_and_ends_at_its_end_time(alice, servers):
    now = datetime.now(UTC)
    lease = rent(alice, gpu_count=1)
    assert post(alice, lease["id"], "stop").status_code == 200
    resized = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 2}, format="json")
    assert resized.status_code == 409 and resized.json()["error"]["code"] == "invalid_state"
    ended = post(alice, lease["id"], "end")
    assert ended.status_code == 200 and ended.json()["state"] == "ended"
    assert Lease.objects.get(pk=lease["id"]).end_reason == "customer"
    assert post(alice, lease["id"], "start").status_code == 409

    timed = rent(alice, gpu_count=1, end_at=(now + 2 * HOUR).isoformat())
    assert post(alice, timed["id"], "stop").status_code == 200
    with time_machine.travel(now + 3 * HOUR):
        assert post(alice, timed["id"], "start").status_code == 409, "its end has passed"
        assert lifecycle.leases_run()["ended"] == 1
        assert lifecycle.leases_run()["ended"] == 0
    row = Lease.objects.get(pk=timed["id"])
    assert (row.state, row.end_reason, row.ended_at) == ("ended", "expired", row.end_at)


# --- who may -----------------------------------------------------------------------------------------------


def test_another_tenant_gets_404_and_a_member_without_the_role_403(alice, charlie, servers):
    lease = rent(alice, gpu_count=1)
    for verb in ("stop", "start"):
        assert post(charlie, lease["id"], verb).status_code == 404
    accountant = make_persona(alice.org, role=Role.BILLING, email="books@alice.example.com")
    assert post(accountant, lease["id"], "stop").status_code == 403
    assert Lease.objects.get(pk=lease["id"]).state == "active"
    assert services.lease_stop(lease=Lease.objects.get(pk=lease["id"])).state == "stopped"
    assert post(accountant, lease["id"], "start").status_code == 403
    assert post(charlie, lease["id"], "start").status_code == 404
    assert Lease.objects.get(pk=lease["id"]).state == "stopped"


# --- the workload comes back -------------------------------------------------------------------------------


@pytest.fixture
def box(bob):
    """Bob's 2-card server with its agent: a 2-card lease takes it all."""
    model = GpuModelFactory(slug="stop-wl-h100", name="Stop WL H100", nvml_names=[H100])
    return enrolled_box(bob, model, name="stop-box", prefix="5t0p", gpus=2)


def test_the_workload_leaves_the_desired_state_when_stopped_and_comes_back_when_started(alice, box):
    lease = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=2)
    [item] = box.agent.desired()["workloads"]
    box.agent.report([{"id": item["id"], "state": "running", "ports": {"22": 40022}}])
    assert post(alice, lease["id"], "stop").status_code == 200

    desired = box.agent.desired()
    assert desired["workloads"] == [], "the agent removes the container (the volumes stay)"
    box.agent.report([{"id": item["id"], "state": "cleaned"}], workloads_version=desired["version"])

    started = post(alice, lease["id"], "start")
    assert started.status_code == 200, started.content
    workload = Workload.objects.get(pk=item["id"])
    assert (workload.state, workload.desired, workload.generation) == ("pending", "running", item["generation"] + 1)
    assert started.json()["workloads"][0]["state"] == "pending"
    [again] = box.agent.desired()["workloads"]
    assert again["id"] == item["id"] and again["generation"] == item["generation"] + 1
    assert sorted(again["gpus"]) == sorted(item["gpus"])


# --- start right after stop: its own cards, still waiting for cleaning, come back -------------------------------


def test_a_start_right_after_stop_takes_back_its_own_cards_waiting_for_cleaning(alice, box):
    lease = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=2)
    [item] = box.agent.desired()["workloads"]
    box.agent.report([{"id": item["id"], "state": "running", "ports": {"22": 40022}}])
    assert post(alice, lease["id"], "stop").status_code == 200
    stopped = box.agent.desired()  # the stop's version: the cards wait for the agent to apply it
    assert Gpu.objects.filter(server_id=box.server_id, needs_cleaning=True).count() == 2

    started = post(alice, lease["id"], "start")
    assert started.status_code == 200, started.content
    assert sorted(g["uuid"] for g in started.json()["gpus"]) == sorted(item["gpus"]), "its own cards, at once"
    [again] = box.agent.desired()["workloads"]
    assert sorted(again["gpus"]) == sorted(item["gpus"])
    # The stop's version reported late does not mark cards clean that are in a workload again.
    box.agent.report([{"id": item["id"], "state": "running"}], workloads_version=stopped["version"])
    cards = Gpu.objects.filter(server_id=box.server_id)
    assert all(c.needs_cleaning and c.clean_after_version is None for c in cards)
    # Its old and new periods of each card meet without overlapping (the exclusion constraint holds them).
    for gpu in cards:
        periods = sorted(Allocation.objects.filter(gpu=gpu).values_list("period", flat=True), key=lambda p: p.lower)
        assert len(periods) == 2 and periods[0].upper <= periods[1].lower
    # Ended, they are cleaned like any card: free again only after the agent applies the version leaving them out.
    assert post(alice, lease["id"], "end").status_code == 200
    ended = box.agent.desired()
    assert ended["workloads"] == [] and all(c.needs_cleaning for c in Gpu.objects.filter(server_id=box.server_id))
    box.agent.report([{"id": item["id"], "state": "cleaned"}], workloads_version=ended["version"])
    assert not Gpu.objects.filter(server_id=box.server_id, needs_cleaning=True).exists()


def test_cards_cleaned_after_another_lease_are_not_taken_and_the_409_says_when_to_retry(alice, charlie, box):
    lease = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=2)
    [item] = box.agent.desired()["workloads"]
    assert post(alice, lease["id"], "stop").status_code == 200
    box.agent.report([{"id": item["id"], "state": "cleaned"}], workloads_version=box.agent.desired()["version"])
    theirs = rent_with_workload(charlie, keys=[add_key(charlie)["id"]], gpu_count=2)  # charlie takes the clean cards
    box.agent.desired()
    assert post(charlie, theirs["id"], "end").status_code == 200
    box.agent.desired()  # charlie's cards now wait for cleaning: none of them is alice's to take back

    refused = post(alice, lease["id"], "start")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert (error["code"], error["cleaning"], error["retry_after_seconds"]) == ("no_capacity", 2, 60)
    assert "2 of its cards are being cleaned after the leases that used them" in error["message"]
    assert "try again in 60 seconds" in error["message"]
    assert Lease.objects.get(pk=lease["id"]).state == "stopped"


def test_own_cards_that_were_cleaned_and_are_held_by_another_lease_are_never_taken_back(alice, charlie, servers):
    lease = rent(alice, gpu_count=4, offer=servers[0].offers.first().pk)
    assert post(alice, lease["id"], "stop").status_code == 200  # no workload: its cards need no cleaning
    rent(charlie, gpu_count=4, offer=servers[0].offers.first().pk)
    refused = post(alice, lease["id"], "start")
    assert refused.status_code == 409
    assert refused.json()["error"]["cleaning"] == 0 and "rented by other leases" in refused.json()["error"]["message"]
