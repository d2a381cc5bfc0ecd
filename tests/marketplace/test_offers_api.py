"""The offer API (API.md: Offers and search): providers list, reprice and delist; anyone searches."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from accounts.models import Role
from inventory.models import Offer, Server, ServerOutage
from scheduler.models import Allocation
from scheduler.pricing import PRICE_PLACES
from tests.conftest import make_persona
from tests.factories import (
    GpuModelFactory,
    OfferFactory,
    OrganizationFactory,
    ProviderFactory,
    ServerFactory,
    online_server,
)

OFFERS = "/api/v1/offers/"
CONTRACT_FIELDS = {"id", "server", "gpu_model", "gpus_total", "gpus_free", "region", "prices", "reliability"}


@pytest.fixture
def h100(db):
    return GpuModelFactory(slug="offers-h100", name="Offers H100", interconnect="nvlink")


@pytest.fixture
def a100(db):
    return GpuModelFactory(slug="offers-a100", name="Offers A100", fp16_tflops="312.00", interconnect="pcie")


def list_offer(persona, server, **body):
    body.setdefault("prices", {"card_hour": "2.50"})
    return persona.api.post(OFFERS, {"server": server.pk, **body}, format="json")


def search(client, **params) -> dict:
    headers = {key: params.pop(key) for key in list(params) if key.startswith("HTTP_")}
    response = client.get(OFFERS, params, **headers)
    assert response.status_code == 200, response.content
    return response.json()


def listed(client, **params) -> list[int]:
    return [row["id"] for row in search(client, **params)["results"]]


def rent(persona, **body):
    body.setdefault("plan", "card_hour")
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def offer_on(server: Server) -> Offer:
    return Offer.objects.get(server=server, delisted_at__isnull=True)


# --- providers list, reprice and delist ----------------------------------------------------------------------


def test_a_provider_lists_a_server_and_gets_the_offer_back_in_the_contracts_shape(bob, anon, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False, region="cn-south-1")
    until = timezone.now() + timedelta(days=90)
    response = list_offer(
        bob,
        server,
        prices={"card_hour": "2.50", "server_month": "12000"},
        interruptible_prices={"card_hour": "1.25"},
        min_gpus=2,
        available_until=until.isoformat(),
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert CONTRACT_FIELDS <= set(body)
    assert body["server"] == server.pk and body["gpu_model"] == h100.pk and body["gpus_total"] == 8
    assert body["region"] == "cn-south-1" and body["currency"] == bob.org.currency
    assert body["prices"] == {"card_hour": "2.5000", "server_month": "12000.0000", "pflops_year": None}
    assert body["interruptible_prices"] == {"card_hour": "1.2500", "server_month": None, "pflops_year": None}
    assert body["min_gpus"] == 2 and body["delisted_at"] is None
    # Anyone sees it listed, with its free cards and reliability filled in.
    detail = anon.get(f"{OFFERS}{body['id']}/")
    assert detail.status_code == 200
    assert detail.json()["prices"] == body["prices"]
    assert detail.json()["gpus_free"] == 8 and detail.json()["reliability"] == 1.0


def test_an_offer_may_be_priced_in_another_currency_than_the_providers(bob, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False)
    response = list_offer(bob, server, currency="CNY", prices={"card_hour": "18"})
    assert response.status_code == 201, response.content
    assert response.json()["currency"] == "CNY"


def test_a_second_live_offer_for_a_server_is_409_until_the_first_is_delisted(bob, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False)
    first = list_offer(bob, server)
    assert first.status_code == 201
    second = list_offer(bob, server, prices={"card_hour": "3.00"})
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "offer_exists"
    assert Offer.objects.filter(server=server).count() == 1
    assert bob.api.delete(f"{OFFERS}{first.json()['id']}/").status_code == 204
    assert list_offer(bob, server, prices={"card_hour": "3.00"}).status_code == 201


def test_another_tenants_server_reads_as_unknown(bob, charlie, h100):
    foreign = online_server(organization=charlie.org, gpu_model=h100, offer=False)
    response = list_offer(bob, foreign)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    missing = bob.api.post(OFFERS, {"server": 999_999, "prices": {"card_hour": "2.50"}}, format="json")
    # Exactly the answer for a server that does not exist: nothing tells bob that charlie's is there.
    assert response.json()["error"]["fields"]["server"] == [
        message.replace("999999", str(foreign.pk)) for message in missing.json()["error"]["fields"]["server"]
    ]
    assert not Offer.objects.exists()


def test_customers_and_members_without_an_operating_role_cannot_list_change_or_delist(alice, bob, anon, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False)
    assert list_offer(alice, server).status_code == 403
    assert anon.post(OFFERS, {"server": server.pk, "prices": {"card_hour": "2.50"}}, format="json").status_code == 401
    accountant = make_persona(bob.org, role=Role.BILLING)
    refused = list_offer(accountant, server)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    offer = list_offer(bob, server).json()
    change = accountant.api.patch(f"{OFFERS}{offer['id']}/", {"prices": {"card_hour": "1.00"}}, format="json")
    assert change.status_code == 403
    assert accountant.api.delete(f"{OFFERS}{offer['id']}/").status_code == 403
    assert alice.api.delete(f"{OFFERS}{offer['id']}/").status_code == 403
    row = Offer.objects.get(pk=offer["id"])
    assert row.card_hour_price == Decimal("2.5") and row.delisted_at is None
    # A plain member operates.
    operator = make_persona(bob.org, role=Role.MEMBER)
    assert operator.api.patch(f"{OFFERS}{offer['id']}/", {"min_gpus": 2}, format="json").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prices": {}}, "prices"),
        ({"prices": {"card_hour": None, "server_month": None}}, "prices"),
        ({"prices": {"card_hour": "-1.00"}}, "prices"),
        ({"prices": {"card_hour": "0"}}, "prices"),
        ({"prices": {"card_hour": "2.50"}, "interruptible_prices": {"card_hour": "2.50"}}, "interruptible_prices"),
        ({"prices": {"card_hour": "2.50"}, "interruptible_prices": {"card_hour": "3.00"}}, "interruptible_prices"),
        ({"prices": {"card_hour": "2.50"}, "interruptible_prices": {"card_hour": "-1"}}, "interruptible_prices"),
        ({"prices": {"card_hour": "2.50"}, "interruptible_prices": {"server_month": "10"}}, "interruptible_prices"),
        ({"prices": {"card_hour": "2.50", "per_token": "0.01"}}, "prices"),
        ({"prices": {"card_hour": "lots"}}, "prices"),
        ({"prices": {"card_hour": "2.50"}, "min_gpus": 9}, "min_gpus"),
        ({"prices": {"card_hour": "2.50"}, "min_gpus": 0}, "min_gpus"),
        ({"prices": {"card_hour": "2.50"}, "currency": "EUR"}, "currency"),
        ({"prices": {"card_hour": "2.50"}, "available_until": "soon"}, "available_until"),
    ],
)
def test_bad_offers_are_400_with_the_fields_at_fault(bob, h100, body, field):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False)
    response = list_offer(bob, server, **body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert not Offer.objects.exists()


def test_a_price_change_applies_to_new_leases_only(alice, bob, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False)
    offer = list_offer(bob, server, prices={"card_hour": "2.50"}, interruptible_prices={"card_hour": "1.25"}).json()
    running = rent(alice, gpu_count=2)
    assert running["unit_price"] == "2.500000" and running["currency"] == "USD"
    changed = bob.api.patch(f"{OFFERS}{offer['id']}/", {"prices": {"card_hour": "4.00"}}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["prices"]["card_hour"] == "4.0000"
    assert changed.json()["interruptible_prices"]["card_hour"] == "1.2500"  # untouched
    assert alice.api.get(f"/api/v1/leases/{running['id']}/").json()["unit_price"] == "2.500000"
    assert set(Allocation.objects.filter(lease_id=running["id"]).values_list("unit_price", flat=True)) == {
        Decimal("2.5")
    }
    assert rent(alice, gpu_count=1)["unit_price"] == "4.000000"
    # The change is checked against what it leaves: an on-demand price under the interruptible one is refused.
    cheaper = bob.api.patch(f"{OFFERS}{offer['id']}/", {"prices": {"card_hour": "1.00"}}, format="json")
    assert cheaper.status_code == 400 and "interruptible_prices" in cheaper.json()["error"]["fields"]
    dropped = bob.api.patch(f"{OFFERS}{offer['id']}/", {"prices": {"card_hour": None}}, format="json")
    assert dropped.status_code == 400
    assert Offer.objects.get(pk=offer["id"]).card_hour_price == Decimal("4")
    assert bob.api.patch(f"{OFFERS}{offer['id']}/", {"min_gpus": 9}, format="json").status_code == 400
    assert bob.api.patch(f"{OFFERS}{offer['id']}/", {"server": 1}, format="json").status_code == 400


def test_delisting_takes_the_offer_off_the_storefront_but_running_leases_go_on(alice, bob, anon, h100):
    server = online_server(organization=bob.org, gpu_model=h100, offer=False, gpus=4)
    offer = list_offer(bob, server).json()
    lease = rent(alice, gpu_count=2)
    assert bob.api.delete(f"{OFFERS}{offer['id']}/").status_code == 204
    assert anon.get(f"{OFFERS}{offer['id']}/").status_code == 404
    assert offer["id"] not in listed(anon)
    still = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()
    assert still["state"] == "active" and len(still["gpus"]) == 2 and still["unit_price"] == "2.500000"
    # Its free cards are no longer for rent.
    refused = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json")
    assert refused.status_code == 400 and "gpu_count" in refused.json()["error"]["fields"]
    mine = bob.api.get(f"{OFFERS}mine/").json()["results"]
    assert [row["id"] for row in mine] == [offer["id"]] and mine[0]["delisted_at"] is not None
    assert bob.api.delete(f"{OFFERS}{offer['id']}/").status_code == 204  # idempotent
    change = bob.api.patch(f"{OFFERS}{offer['id']}/", {"prices": {"card_hour": "3.00"}}, format="json")
    assert change.status_code == 409


def test_another_tenants_offer_cannot_be_changed_or_delisted(bob, charlie, h100):
    offer = offer_on(online_server(organization=bob.org, gpu_model=h100))
    change = charlie.api.patch(f"{OFFERS}{offer.pk}/", {"prices": {"card_hour": "0.01"}}, format="json")
    assert change.status_code == 404 and change.json()["error"]["code"] == "not_found"
    assert charlie.api.delete(f"{OFFERS}{offer.pk}/").status_code == 404
    assert charlie.api.delete(f"{OFFERS}999999/").status_code == 404
    offer.refresh_from_db()
    assert offer.card_hour_price == Decimal("2.5") and offer.delisted_at is None
    assert charlie.api.get(f"{OFFERS}mine/").json()["results"] == []


# --- search --------------------------------------------------------------------------------------------------


def test_search_is_public_and_paginated(anon, bob, h100):
    offers = [offer_on(online_server(organization=bob.org, gpu_model=h100)) for _ in range(3)]
    body = search(anon, page_size=2)
    assert body["count"] == 3 and body["next"] is not None and len(body["results"]) == 2
    assert CONTRACT_FIELDS <= set(body["results"][0])
    assert {row["id"] for row in body["results"]} | {
        row["id"] for row in search(anon, page_size=2, page=2)["results"]
    } == {o.pk for o in offers}
    row = body["results"][0]
    assert row["gpus_total"] == 8 and row["gpus_free"] == 8 and row["reliability"] == 1.0
    assert row["prices"] == {"card_hour": "2.5000", "server_month": "12000.0000", "pflops_year": "150000.0000"}
    assert row["local_prices"] is None  # an anonymous visitor asked for no currency


def test_each_filter_narrows_the_search(anon, bob, h100, a100):
    east = offer_on(online_server(organization=bob.org, gpu_model=h100, region="cn-east-1"))
    north = offer_on(
        online_server(
            organization=bob.org,
            gpu_model=a100,
            region="cn-north-1",
            gpus=4,
            offer={
                "card_hour_price": Decimal("1.80"),
                "card_hour_interruptible_price": None,
                "server_month_price": None,
                "server_month_interruptible_price": None,
            },
        )
    )
    small = offer_on(
        online_server(organization=bob.org, gpu_model=h100, region="cn-north-1", gpus=2, offer={"card_hour_price": 3})
    )
    everyone = {east.pk, north.pk, small.pk}
    assert set(listed(anon)) == everyone
    assert set(listed(anon, gpu_model=h100.pk)) == {east.pk, small.pk}
    assert set(listed(anon, gpu_model=a100.pk)) == {north.pk}
    assert set(listed(anon, region="cn-north-1")) == {north.pk, small.pk}
    assert set(listed(anon, region="eu-west-1")) == set()
    assert set(listed(anon, interconnect="pcie")) == {north.pk}
    assert set(listed(anon, interconnect="nvlink")) == {east.pk, small.pk}
    assert set(listed(anon, plan="server_month")) == {east.pk, small.pk}
    assert set(listed(anon, plan="card_hour")) == everyone
    assert set(listed(anon, plan="card_hour", interruptible="true")) == {east.pk, small.pk}
    assert set(listed(anon, min_gpus=3)) == {east.pk, north.pk}
    assert set(listed(anon, min_gpus=5)) == {east.pk}
    assert set(listed(anon, max_price="2.50")) == {east.pk, north.pk}
    assert set(listed(anon, max_price="1.80")) == {north.pk}
    assert set(listed(anon, max_price="1.79")) == set()
    assert set(listed(anon, plan="server_month", max_price="12000")) == {east.pk, small.pk}
    assert set(listed(anon, plan="card_hour", interruptible="true", max_price="1.25")) == {east.pk, small.pk}
    assert set(listed(anon, min_reliability="1")) == everyone
    assert set(listed(anon, gpu_model=h100.pk, region="cn-north-1", max_price="3")) == {small.pk}


def test_ordering_by_price_ascending_and_descending(anon, bob, h100):
    def offer(price: str | None, **extra) -> int:
        fields = {"card_hour_price": price, "card_hour_interruptible_price": None, **extra}
        return offer_on(online_server(organization=bob.org, gpu_model=h100, gpus=2, offer=fields)).pk

    middle, cheap, dear = offer("2.25"), offer("1.50"), offer("3.00")
    monthly_only = offer(None)  # prices server_month alone: no card_hour price to sort by
    assert listed(anon) == [cheap, middle, dear, monthly_only]  # ordering=price is the default
    assert listed(anon, ordering="price") == [cheap, middle, dear, monthly_only]
    assert listed(anon, ordering="-price") == [dear, middle, cheap, monthly_only]
    assert listed(anon, ordering="-price", plan="card_hour") == [dear, middle, cheap]
    assert listed(anon, ordering="newest") == [monthly_only, dear, cheap, middle]


def test_gpus_free_drops_while_cards_are_leased(alice, anon, bob, h100):
    offer = offer_on(online_server(organization=bob.org, gpu_model=h100))

    def free() -> int:
        return anon.get(f"{OFFERS}{offer.pk}/").json()["gpus_free"]

    lease = rent(alice, gpu_count=3)
    assert free() == 5
    assert listed(anon, min_gpus=5) == [offer.pk] and listed(anon, min_gpus=6) == []
    assert listed(anon, ordering="gpus_free") == [offer.pk]
    # A reservation holds cards from its start only: they are free now.
    start = timezone.now() + timedelta(hours=2)
    rent(alice, gpu_count=4, start_at=start.isoformat(), end_at=(start + timedelta(hours=1)).isoformat())
    assert free() == 5
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
    assert free() == 8


def test_unapproved_providers_and_offline_drained_or_expired_offers_are_not_listed(anon, bob, h100):
    good = offer_on(online_server(organization=bob.org, gpu_model=h100))
    pending_provider = ProviderFactory(status="pending")
    hidden = [
        offer_on(online_server(organization=pending_provider, gpu_model=h100)),
        offer_on(online_server(organization=bob.org, gpu_model=h100, status="unreachable")),
        offer_on(online_server(organization=bob.org, gpu_model=h100, status="pending_enrollment")),
        offer_on(online_server(organization=bob.org, gpu_model=h100, drained=True)),
        offer_on(
            online_server(
                organization=bob.org, gpu_model=h100, offer={"available_until": timezone.now() - timedelta(hours=1)}
            )
        ),
    ]
    assert listed(anon) == [good.pk]
    for offer in hidden:
        assert anon.get(f"{OFFERS}{offer.pk}/").status_code == 404
    # A pending provider lists its servers; the offer shows once staff approve the provider.
    pending_provider.status = "active"
    pending_provider.save()
    assert set(listed(anon)) == {good.pk, hidden[0].pk}


def test_a_pending_provider_may_create_offers_that_are_not_listed(anon, h100):
    owner = make_persona(ProviderFactory(status="pending"))
    server = online_server(organization=owner.org, gpu_model=h100, offer=False)
    response = list_offer(owner, server)
    assert response.status_code == 201
    assert listed(anon) == []
    assert [row["id"] for row in owner.api.get(f"{OFFERS}mine/").json()["results"]] == [response.json()["id"]]


@pytest.fixture
def two_currencies(bob, h100):
    """A USD offer at 2.50 and a CNY offer at 14.20 per card-hour."""
    dollars = offer_on(online_server(organization=bob.org, gpu_model=h100, offer={"card_hour_price": Decimal("2.5")}))
    yuan_provider = ProviderFactory(currency="CNY")
    yuan = offer_on(
        online_server(
            organization=yuan_provider,
            gpu_model=h100,
            offer={"card_hour_price": Decimal("14.20"), "card_hour_interruptible_price": Decimal("7")},
        )
    )
    assert yuan.currency == "CNY" and dollars.currency == "USD"
    return dollars, yuan


def test_max_price_compares_in_the_requested_currency(anon, alice, two_currencies):
    dollars, yuan = two_currencies
    yuan_in_usd = Decimal("14.20") * settings.SUANLI_FX_RATES[("CNY", "USD")]
    usd_in_yuan = Decimal("2.5") * settings.SUANLI_FX_RATES[("USD", "CNY")]
    assert yuan_in_usd < Decimal("2.5") < Decimal("14.20") < usd_in_yuan  # the test's premise
    assert set(listed(anon, currency="USD", max_price=str(yuan_in_usd))) == {yuan.pk}
    assert set(listed(anon, currency="USD", max_price=str(yuan_in_usd - Decimal("0.0001")))) == set()
    assert set(listed(anon, currency="USD", max_price="2.50")) == {yuan.pk, dollars.pk}
    assert set(listed(anon, currency="CNY", max_price="14.20")) == {yuan.pk}
    assert set(listed(anon, currency="CNY", max_price=str(usd_in_yuan))) == {yuan.pk, dollars.pk}
    assert listed(anon, currency="USD", ordering="price") == [yuan.pk, dollars.pk]
    assert listed(anon, currency="CNY", ordering="-price") == [dollars.pk, yuan.pk]
    # A signed-in renter compares in its organisation's currency without asking.
    assert alice.org.currency == "USD"
    assert set(listed(alice.api, max_price="2.00")) == {yuan.pk}


def test_max_price_without_a_currency_is_read_in_the_currency_prices_are_shown_in(anon, alice, two_currencies):
    """No `currency`: the ceiling is in the caller's organisation's currency, else USD (CNY for a Chinese
    Accept-Language, as on the storefront), never each offer's own (3 would let 3 CNY pass as 3 USD)."""
    dollars, yuan = two_currencies
    yuan_in_usd = Decimal("14.20") * settings.SUANLI_FX_RATES[("CNY", "USD")]  # about 2.00 USD
    usd_in_yuan = Decimal("2.5") * settings.SUANLI_FX_RATES[("USD", "CNY")]  # 17.75 CNY
    # Anonymous, no language: USD. The CNY offer at 14.20 CNY is about 2 USD, under 3; its own 14.20 is not.
    assert set(listed(anon, max_price="3")) == {yuan.pk, dollars.pk}
    assert set(listed(anon, max_price=str(yuan_in_usd))) == {yuan.pk}
    rows = search(anon)["results"]
    assert {row["id"]: row["local_prices"] and row["local_prices"]["currency"] for row in rows} == {
        dollars.pk: None,
        yuan.pk: "USD",
    }, "the prices shown are in the currency compared"
    # Anonymous in Chinese: CNY. 15 CNY passes the yuan offer only; 17.75 CNY both.
    assert set(listed(anon, max_price="15", HTTP_ACCEPT_LANGUAGE="zh-hans")) == {yuan.pk}
    assert set(listed(anon, max_price=str(usd_in_yuan), HTTP_ACCEPT_LANGUAGE="zh-hans")) == {yuan.pk, dollars.pk}
    assert set(listed(anon, max_price="15", currency="USD", HTTP_ACCEPT_LANGUAGE="zh-hans")) == {yuan.pk, dollars.pk}
    # A renter paying in yuan: its organisation's currency, whatever the language.
    yuan_renter = make_persona(OrganizationFactory(currency="CNY"))
    assert set(listed(yuan_renter.api, max_price="15")) == {yuan.pk}
    assert set(listed(yuan_renter.api, max_price="3", currency="USD")) == {yuan.pk, dollars.pk}


def test_the_selector_refuses_a_ceiling_without_its_currency(two_currencies):
    from marketplace.selectors import OfferQuery, offers_listed

    with pytest.raises(ValueError, match="max_price needs the currency"):
        offers_listed(OfferQuery(max_price=Decimal(3)))
    assert offers_listed(OfferQuery(max_price=Decimal(3), currency="USD")).count() == 2


def test_local_prices_appear_in_the_callers_currency(anon, alice, two_currencies):
    dollars, yuan = two_currencies
    rate = settings.SUANLI_FX_RATES[("CNY", "USD")]
    rows = {row["id"]: row for row in search(alice.api)["results"]}
    assert rows[dollars.pk]["local_prices"] is None  # already in alice's currency
    local = rows[yuan.pk]["local_prices"]
    assert local["currency"] == "USD"
    assert local["prices"]["card_hour"] == str((Decimal("14.20") * rate).quantize(PRICE_PLACES))
    assert local["interruptible_prices"]["card_hour"] == str((Decimal("7") * rate).quantize(PRICE_PLACES))
    assert rows[yuan.pk]["prices"]["card_hour"] == "14.2000" and rows[yuan.pk]["currency"] == "CNY"
    # A renter paying in yuan sees the dollar offer converted; anyone may ask for a currency.
    yuan_renter = make_persona(OrganizationFactory(currency="CNY"))
    detail = yuan_renter.api.get(f"{OFFERS}{dollars.pk}/").json()
    usd_rate = settings.SUANLI_FX_RATES[("USD", "CNY")]
    assert detail["local_prices"]["currency"] == "CNY"
    assert detail["local_prices"]["prices"]["card_hour"] == str((Decimal("2.5") * usd_rate).quantize(PRICE_PLACES))
    asked = {row["id"]: row for row in search(anon, currency="CNY")["results"]}
    assert asked[dollars.pk]["local_prices"]["currency"] == "CNY" and asked[yuan.pk]["local_prices"] is None


def test_reliability_is_the_share_of_the_last_30_days_the_server_was_reachable(anon, bob, h100):
    now = timezone.now()
    old = online_server(organization=bob.org, gpu_model=h100, name="old")
    young = online_server(organization=bob.org, gpu_model=h100, name="young")
    steady = online_server(organization=bob.org, gpu_model=h100, name="steady")
    Server.objects.filter(pk__in=[old.pk, steady.pk]).update(created_at=now - timedelta(days=90))
    Server.objects.filter(pk=young.pk).update(created_at=now - timedelta(days=10))
    # old: 3 days inside the window, 1 day of one that straddles its start, and one long before it.
    ServerOutage.objects.create(server=old, started_at=now - timedelta(days=5), ended_at=now - timedelta(days=2))
    ServerOutage.objects.create(server=old, started_at=now - timedelta(days=31), ended_at=now - timedelta(days=29))
    ServerOutage.objects.create(server=old, started_at=now - timedelta(days=60), ended_at=now - timedelta(days=40))
    ServerOutage.objects.create(server=steady, started_at=now - timedelta(days=45), ended_at=now - timedelta(days=35))
    # young: one day down out of the ten it has been listed.
    ServerOutage.objects.create(server=young, started_at=now - timedelta(days=3), ended_at=now - timedelta(days=2))
    rows = {row["server"]: row["reliability"] for row in search(anon)["results"]}
    assert rows[old.pk] == pytest.approx(1 - 4 / 30, abs=1e-3)
    assert rows[young.pk] == pytest.approx(0.9, abs=1e-3)
    assert rows[steady.pk] == 1.0
    by_server = {offer_on(s).pk: s.pk for s in (old, young, steady)}
    assert [by_server[i] for i in listed(anon, ordering="-reliability")] == [steady.pk, young.pk, old.pk]
    assert {by_server[i] for i in listed(anon, min_reliability="0.89")} == {steady.pk, young.pk}
    assert {by_server[i] for i in listed(anon, min_reliability="0.95")} == {steady.pk}


def test_a_server_created_this_instant_has_a_reliability_and_no_error(anon, bob, h100):
    with time_machine.travel(timezone.now(), tick=False):
        offer = offer_on(online_server(organization=bob.org, gpu_model=h100))
        response = anon.get(OFFERS)
    assert response.status_code == 200, response.content
    assert [(row["id"], row["reliability"]) for row in response.json()["results"]] == [(offer.pk, 1.0)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_gpus": "many"}, "min_gpus"),
        ({"min_gpus": "0"}, "min_gpus"),
        ({"min_gpus": "17"}, "min_gpus"),
        ({"gpu_model": "h100"}, "gpu_model"),
        ({"plan": "per_token"}, "plan"),
        ({"interruptible": "perhaps"}, "interruptible"),
        ({"max_price": "-1"}, "max_price"),
        ({"max_price": "cheap"}, "max_price"),
        ({"interconnect": "carrier_pigeon"}, "interconnect"),
        ({"min_reliability": "1.5"}, "min_reliability"),
        ({"ordering": "cheapest"}, "ordering"),
        ({"currency": "EUR"}, "currency"),
        ({"page_size": "0"}, "page_size"),
        ({"colour": "green"}, "colour"),
    ],
)
def test_bad_search_parameters_are_400(anon, bob, h100, params, field):
    offer_on(online_server(organization=bob.org, gpu_model=h100))
    response = anon.get(OFFERS, params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_mine_lists_the_callers_offers_only(bob, charlie, alice, h100):
    live = offer_on(online_server(organization=bob.org, gpu_model=h100))
    gone = OfferFactory(server=ServerFactory(organization=bob.org, gpu_model=h100), delisted_at=timezone.now())
    offer_on(online_server(organization=charlie.org, gpu_model=h100))
    assert [row["id"] for row in bob.api.get(f"{OFFERS}mine/").json()["results"]] == [gone.pk, live.pk]
    assert alice.api.get(f"{OFFERS}mine/").json()["results"] == []
