"""Resold cards and workloads (issue 20): a contract's own workload never sees the cards a resale lease holds; a card
passes between the contract's workload and the resale's only once the agent has cleaned it; taken back (lend-back),
the cards return to the contract's workload after the resale workload is cleaned."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from scheduler.models import Lease, LeaseEvent
from tests.conftest import make_persona
from tests.factories import OrganizationFactory
from tests.workloads.conftest import rent_with_workload


@pytest.fixture
def holder(db):
    """A customer holding a whole server by the month, its own workload on it."""
    return make_persona(OrganizationFactory(name="Eve Research"), email="eve@example.com")


def cards_of(desired: dict, lease_id: int) -> list[str]:
    return next((item["gpus"] for item in desired["workloads"] if item["lease"] == lease_id), [])


def test_lent_back_cards_leave_the_contracts_workload_clean_and_come_back_clean(holder, alice, box):
    end = (timezone.now() + timedelta(days=30)).isoformat()
    contract = rent_with_workload(holder, plan="server_month", servers=1, end_at=end)
    first = box.agent.desired()
    assert sorted(cards_of(first, contract["id"])) == sorted(box.uuids)
    box.agent.report(workloads_version=first["version"])

    offer = holder.api.post(
        "/api/v1/offers/",
        {
            "backed_by_lease": contract["id"],
            "prices": {},
            "interruptible_prices": {"card_hour": "1.2000"},
            "interruptible_only": True,
        },
        format="json",
    )
    assert offer.status_code == 201, offer.content
    lease = rent_with_workload(alice, offer=offer.json()["id"], gpu_count=2, interruptible=True)
    resold = sorted(g["uuid"] for g in lease["gpus"])

    # The contract's workload loses the resold cards at once; alice's waits until they are cleaned of it.
    handing = box.agent.desired()
    assert sorted(cards_of(handing, contract["id"])) == sorted(set(box.uuids) - set(resold))
    assert cards_of(handing, lease["id"]) == []
    box.agent.report(workloads_version=handing["version"])
    served = box.agent.desired()
    assert sorted(cards_of(served, lease["id"])) == resold
    assert set(cards_of(served, contract["id"])).isdisjoint(resold)
    box.agent.report(workloads_version=served["version"])
    assert box.agent.desired()["version"] == served["version"]  # settled: nothing flaps

    # Taken back with the usual notice: alice's lease is preempted, then her workload goes and the cards are cleaned
    # before the contract's workload has them again.
    with override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=0):
        taken = holder.api.post(f"/api/v1/offers/{offer.json()['id']}/reclaim/", {"gpu_count": 2}, format="json")
    assert taken.status_code == 200, taken.content
    assert Lease.objects.get(pk=lease["id"]).state == "preempted"
    assert LeaseEvent.objects.filter(lease_id=lease["id"], kind="preemption_notice").exists()
    leaving = box.agent.desired()
    assert cards_of(leaving, lease["id"]) == []
    assert set(cards_of(leaving, contract["id"])).isdisjoint(resold)
    box.agent.report(workloads_version=leaving["version"])
    back = box.agent.desired()
    assert sorted(cards_of(back, contract["id"])) == sorted(box.uuids)
    box.agent.report(workloads_version=back["version"])
    assert box.agent.desired()["version"] == back["version"]
