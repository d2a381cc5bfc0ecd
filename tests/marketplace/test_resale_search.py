"""Resale offers in offer search (issue 20): listed like any other, the reseller as the seller, with their own free
cards (the contract's cards on the server held now, less those resold now), in the API and on the storefront."""

from __future__ import annotations

from datetime import timedelta

import pytest

from inventory.models import Offer
from scheduler import services
from scheduler.models import Lease
from tests.conftest import Persona, make_persona
from tests.factories import GpuModelFactory, OrganizationFactory, online_server
from tests.scheduler.test_resale import contract, rent, resale_offer


@pytest.fixture
def broker(db) -> Persona:
    return make_persona(OrganizationFactory(name="Dana Compute Brokers"), email="dana@example.com")


@pytest.fixture
def rack(bob):
    model = GpuModelFactory(slug="resale-h100", name="Resale H100")
    return [online_server(organization=bob.org, gpu_model=model, name=f"resale-rack-{i}") for i in range(2)]


def search(client, **params) -> dict[int, dict]:
    response = client.get("/api/v1/offers/", {"page_size": 100, **params})
    assert response.status_code == 200, response.content
    return {offer["id"]: offer for offer in response.json()["results"]}


def test_search_shows_the_resale_offer_with_the_reseller_and_its_own_free_cards(broker, alice, anon, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    assert search(anon)[offer["id"]]["gpus_free"] == 8
    assert rent(alice, offer=offer["id"], gpu_count=3).status_code == 201
    found = search(anon)
    listed = found[offer["id"]]
    assert listed["provider"] == "Dana Compute Brokers" and listed["is_resale"] is True
    assert listed["gpus_free"] == 5
    # The provider's own offer of that server shows it full; the other server's all free.
    direct = Offer.objects.get(server_id=offer["server"], is_resale=False)
    assert found[direct.pk]["gpus_free"] == 0 and found[direct.pk]["provider"] == "Bob IDC"
    other = Offer.objects.exclude(server_id=offer["server"]).get(is_resale=False)
    assert found[other.pk]["gpus_free"] == 8
    detail = anon.get(f"/api/v1/offers/{offer['id']}/").json()
    assert detail["provider"] == "Dana Compute Brokers" and detail["gpus_free"] == 5
    assert offer["id"] in search(anon, min_gpus=5) and offer["id"] not in search(anon, min_gpus=6)
    # The storefront lists it under the reseller's name.
    page = anon.get("/offers/")
    assert page.status_code == 200 and "Dana Compute Brokers" in page.content.decode()
    # Delisted, it leaves the search; the lease on it runs on.
    assert broker.api.delete(f"/api/v1/offers/{offer['id']}/").status_code == 204
    assert offer["id"] not in search(anon)
    assert Lease.objects.filter(offer_id=offer["id"], state="active").count() == 1


def test_a_resale_lease_ended_with_its_contract_says_why_on_its_page_in_both_languages(client, broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    lease = rent(alice, offer=offer["id"], gpu_count=2).json()
    # Billing stops the contract (funds ran out): the broker's own end is refused while resale leases run.
    services.lease_end(lease=Lease.objects.get(pk=backing["id"]), reason="funds_exhausted")
    client.force_login(alice.user)
    english = client.get(f"/leases/{lease['id']}/").content.decode()
    assert "Ended: the contract behind its resale offer ended" in english
    chinese = client.get(f"/leases/{lease['id']}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "已结束：其转售报价背后的合约已到期或终止" in chinese


def test_the_lease_pages_end_button_of_a_resold_contract_shows_why_it_is_refused(client, broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    rent(alice, offer=offer["id"], gpu_count=2)
    client.force_login(broker.user)
    refused = client.post(f"/leases/{backing['id']}/end/", {"idempotency_key": "end-1", "confirm": "1"}, follow=True)
    page = refused.content.decode()
    assert refused.status_code == 200
    assert "1 on-demand and 0 interruptible resale leases run on them" in page and "/reclaim/" in page
    assert Lease.objects.get(pk=backing["id"]).state == "active"


def test_a_resale_offer_is_rented_from_its_storefront_page_onto_the_contracts_cards(client, broker, alice, rack):
    backing = contract(broker)
    offer = resale_offer(broker, backing["id"])
    client.force_login(alice.user)
    page = client.get(f"/offers/{offer['id']}/")
    assert page.status_code == 200 and "Dana Compute Brokers" in page.content.decode()
    # The offer ends with the contract: the form asks for an end no later than that.
    end = (Lease.objects.get(pk=backing["id"]).end_at - timedelta(days=1)).replace(second=0, microsecond=0)
    data = {"plan": "card_hour", "gpu_count": 2, "months": 1, "term_years": 1, "idempotency_key": "resale-1"}
    response = client.post(f"/offers/{offer['id']}/", {**data, "end_at": end.strftime("%Y-%m-%dT%H:%M")})
    lease = Lease.objects.get(organization=alice.org)
    assert response.status_code == 302 and response["Location"] == f"/leases/{lease.pk}/"
    held = set(Lease.objects.get(pk=backing["id"]).allocations.values_list("gpu_id", flat=True))
    assert lease.offer_id == offer["id"] and lease.end_at == end
    assert set(lease.allocations.values_list("gpu_id", flat=True)) <= held
    assert all(row.backing_id for row in lease.allocations.all())
