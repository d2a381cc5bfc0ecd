"""Resale seen by a careless client (issue 20's review): retries of the reseller's writes are harmless."""

from __future__ import annotations

import pytest

from scheduler.models import Lease
from tests.conftest import Persona, make_persona
from tests.factories import OrganizationFactory
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
