"""Nothing of one tenant reaches the next: a card whose workload ended is not allocatable until its agent has read
the desired state that leaves the workload out and reports `workloads_version` at least that version; a card not
reported clean within SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS is drained."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from tests.workloads.conftest import rent, rent_with_workload
from workloads.checks import workloads_check

T0 = datetime(2026, 3, 10, 2, 20, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def no_capacity(response) -> bool:
    return response.status_code == 409 and response.json()["error"]["code"] == "no_capacity"


def ended_workload_lease(alice, box, clock) -> dict:
    """An 8-card lease whose workload ran on box, then ended; returns the desired state that ran it."""
    lease = rent_with_workload(alice, gpu_count=8)
    running = box.agent.desired()
    box.agent.report([{"id": running["workloads"][0]["id"], "state": "running"}], workloads_version=running["version"])
    clock.move_to(T0 + timedelta(minutes=30))
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
    return running


def test_ended_cards_come_back_only_when_the_agent_reports_the_version_that_removed_the_workload(
    clock, alice, charlie, box
):
    running = ended_workload_lease(alice, box, clock)
    assert no_capacity(rent(charlie, gpu_count=8))
    assert no_capacity(rent(charlie, gpu_count=1))
    # The agent has not even read the state without the workload yet: reporting the old version cleans nothing.
    box.agent.report([{"id": running["workloads"][0]["id"], "state": "stopping"}], workloads_version=running["version"])
    assert no_capacity(rent(charlie, gpu_count=8))

    removal = box.agent.desired()
    assert removal["workloads"] == [] and removal["version"] > running["version"]
    assert no_capacity(rent(charlie, gpu_count=8))
    box.agent.report([{"id": running["workloads"][0]["id"], "state": "cleaned"}], workloads_version=running["version"])
    assert no_capacity(rent(charlie, gpu_count=8))

    box.agent.report(workloads_version=removal["version"])
    response = rent(charlie, gpu_count=8)
    assert response.status_code == 201, response.content
    assert sorted(g["uuid"] for g in response.json()["gpus"]) == sorted(box.uuids)


def test_a_later_version_reported_cleans_too(clock, alice, charlie, box):
    ended_workload_lease(alice, box, clock)
    removal = box.agent.desired()
    box.agent.report(workloads_version=removal["version"] + 5)
    assert rent(charlie, gpu_count=8).status_code == 201


def test_cards_leaving_a_resized_lease_are_cleaned_before_anyone_else_gets_them(clock, alice, charlie, box):
    lease = rent_with_workload(alice, gpu_count=8)
    box.agent.desired()
    clock.move_to(T0 + timedelta(minutes=10))
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 6}, format="json").status_code == 200
    assert no_capacity(rent(charlie, gpu_count=1))
    shrunk = box.agent.desired()
    assert len(shrunk["workloads"][0]["gpus"]) == 6
    box.agent.report(workloads_version=shrunk["version"])
    response = rent(charlie, gpu_count=2)
    assert response.status_code == 201
    assert set(g["uuid"] for g in response.json()["gpus"]).isdisjoint(shrunk["workloads"][0]["gpus"])
    # The cards still in alice's workload stay hers and unclean.
    assert no_capacity(rent(charlie, gpu_count=1))


def test_cards_no_agent_ever_ran_a_workload_on_are_free_at_once(clock, alice, charlie, box):
    lease = rent_with_workload(alice, gpu_count=8)
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
    assert rent(charlie, gpu_count=8).status_code == 201


def test_a_card_not_reported_clean_in_time_is_drained(clock, alice, bob, box, settings):
    settings.SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS = 600
    ended_workload_lease(alice, box, clock)
    removal = box.agent.desired()
    clock.move_to(T0 + timedelta(minutes=30, seconds=599))
    assert workloads_check()["drained_unclean"] == 0
    clock.move_to(T0 + timedelta(minutes=30, seconds=601))
    assert workloads_check()["drained_unclean"] == 8
    gpus = bob.api.get(f"/api/v1/servers/{box.server_id}/").json()["gpus"]
    assert all(g["drained"] for g in gpus)
    assert all("not reported clean" in g["drained_reason"] for g in gpus)
    assert workloads_check()["drained_unclean"] == 0
    # Reported clean at last, they stay drained until the provider looks at them: none is to be had.
    box.agent.report(workloads_version=removal["version"])
    refused = rent(alice, gpu_count=1)
    assert refused.status_code == 400 and "gpu_count" in refused.json()["error"]["fields"]
