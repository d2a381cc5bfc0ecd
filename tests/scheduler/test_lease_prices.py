"""Leases go only on cards a live offer prices for the plan, and fix each card's price from that offer."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from inventory.models import Gpu, GpuHealthEvent, Offer, Server
from scheduler import lifecycle
from scheduler.models import Allocation, Lease
from scheduler.pricing import PRICE_PLACES
from tests.conftest import make_persona
from tests.factories import OrganizationFactory, ProviderFactory, online_server


def post(persona, **body):
    body.setdefault("plan", "card_hour")
    return persona.api.post("/api/v1/leases/", body, format="json")


def rent(persona, **body) -> dict:
    response = post(persona, **body)
    assert response.status_code == 201, response.content
    return response.json()


def refused(response, status: int) -> bool:
    """No lease: 409 `no_capacity` when the matching cards are busy, 400 when no card could ever match."""
    code = {400: "invalid", 409: "no_capacity"}[status]
    return response.status_code == status and response.json()["error"]["code"] == code


def offer_on(server: Server) -> Offer:
    return Offer.objects.get(server=server, delisted_at__isnull=True)


def prices_by_server(lease_id: int) -> dict[int, set[Decimal]]:
    out: dict[int, set[Decimal]] = {}
    for server_id, price in Allocation.objects.filter(lease_id=lease_id).values_list("server_id", "unit_price"):
        out.setdefault(server_id, set()).add(price)
    return out


def later(**delta) -> str:
    return (timezone.now() + timedelta(**delta)).isoformat()


# --- where leases may go ---------------------------------------------------------------------------------------


def test_a_server_without_an_offer_is_never_allocated(alice, bob, h100):
    listed = online_server(organization=bob.org, gpu_model=h100, gpus=2, name="listed")
    bare = online_server(organization=bob.org, gpu_model=h100, gpus=8, offer=False, name="bare")
    lease = rent(alice, gpu_count=2)
    assert {g["server"] for g in lease["gpus"]} == {listed.pk}
    # Eight free cards on the bare server, and still no capacity.
    assert refused(post(alice, gpu_count=1), 409)
    assert refused(post(alice, gpu_count=1, server=bare.pk), 400)
    end = later(days=30)
    assert refused(post(alice, plan="server_month", servers=1, end_at=end), 409)
    assert refused(post(alice, plan="pflops_year", pflops="0.5", end_at=end), 409)
    assert not Allocation.objects.filter(server=bare).exists()
    assert Lease.objects.count() == 1


def test_a_plan_the_offer_does_not_price_is_not_rented_from_it(alice, bob, h100):
    online_server(
        organization=bob.org,
        gpu_model=h100,
        offer={"server_month_price": None, "server_month_interruptible_price": None},
    )
    end = later(days=30)
    assert refused(post(alice, plan="server_month", servers=1, end_at=end), 400)
    assert rent(alice, plan="pflops_year", pflops="0.9", end_at=end)["unit_price"] == "150000.000000"
    assert not Lease.objects.filter(plan="server_month").exists()


def test_an_offer_without_an_interruptible_price_serves_on_demand_leases_only(alice, charlie, bob, h100):
    firm_only = online_server(
        organization=bob.org, gpu_model=h100, gpus=2, offer={"card_hour_interruptible_price": None}
    )
    both = online_server(organization=bob.org, gpu_model=h100, gpus=2)
    spot = rent(charlie, gpu_count=2, interruptible=True)
    assert {g["server"] for g in spot["gpus"]} == {both.pk}
    assert spot["unit_price"] == "1.250000"  # the interruptible price
    assert refused(post(charlie, gpu_count=1, interruptible=True), 409)
    # On demand, the firm-only server is used (free cards before any preemption).
    firm = rent(alice, gpu_count=2)
    assert {g["server"] for g in firm["gpus"]} == {firm_only.pk} and firm["unit_price"] == "2.500000"
    assert Lease.objects.get(pk=spot["id"]).state == "active"


def test_an_offer_ending_before_the_lease_is_not_used(alice, bob, h100):
    ending = online_server(
        organization=bob.org,
        gpu_model=h100,
        gpus=4,
        name="ending",
        offer={"available_until": timezone.now() + timedelta(hours=2)},
    )
    open_ended = online_server(organization=bob.org, gpu_model=h100, gpus=4, name="open")
    # Both have 4 free cards; ties go to the lower id (the ending one) unless its offer ends too soon.
    assert {g["server"] for g in rent(alice, gpu_count=2, end_at=later(hours=3))["gpus"]} == {open_ended.pk}
    # An open-ended card_hour lease needs an offer with no end.
    assert {g["server"] for g in rent(alice, gpu_count=1)["gpus"]} == {open_ended.pk}
    short = rent(alice, gpu_count=2, end_at=later(hours=1))
    assert {g["server"] for g in short["gpus"]} == {ending.pk}
    assert refused(post(alice, gpu_count=2), 409)
    assert refused(post(alice, gpu_count=1, offer=offer_on(ending).pk), 400)
    assert Allocation.objects.filter(server=ending).count() == 2


def test_an_offers_minimum_card_count_is_respected(alice, bob, h100):
    big = online_server(organization=bob.org, gpu_model=h100, gpus=8, name="big", offer={"min_gpus": 4})
    small = online_server(organization=bob.org, gpu_model=h100, gpus=2, name="small")
    assert {g["server"] for g in rent(alice, gpu_count=2)["gpus"]} == {small.pk}
    # Six cards are free on `big`, but not for a rental of fewer than four.
    assert refused(post(alice, gpu_count=1), 409)
    assert refused(post(alice, gpu_count=3, offer=offer_on(big).pk), 400)
    assert {g["server"] for g in rent(alice, gpu_count=4)["gpus"]} == {big.pk}
    assert Allocation.objects.filter(server=big).count() == 4


def test_a_lease_spread_over_servers_gives_none_fewer_cards_than_its_offers_minimum(alice, bob, h100):
    first = online_server(organization=bob.org, gpu_model=h100, gpus=8, name="first")
    picky = online_server(organization=bob.org, gpu_model=h100, gpus=4, name="picky", offer={"min_gpus": 4})
    last = online_server(organization=bob.org, gpu_model=h100, gpus=8, name="last")
    # 10 cards: 8 + 2. The best fit for the 2 would be `picky` (fewest free), but it rents 4 cards or more.
    lease = rent(alice, gpu_count=10)
    per_server = Counter(g["server"] for g in lease["gpus"])
    assert per_server == {first.pk: 8, last.pk: 2}
    assert not Allocation.objects.filter(server=picky).exists()


def test_a_lease_that_holds_an_offers_minimum_may_grow_there_by_one(alice, bob, h100):
    picky = online_server(organization=bob.org, gpu_model=h100, gpus=8, name="picky", offer={"min_gpus": 4})
    lease = rent(alice, gpu_count=4)
    grown = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 5}, format="json")
    assert grown.status_code == 200, grown.content
    assert {g["server"] for g in grown.json()["gpus"]} == {picky.pk} and len(grown.json()["gpus"]) == 5


def test_a_lease_shrinks_without_leaving_a_server_under_its_offers_minimum(alice, bob, h100):
    picky = online_server(organization=bob.org, gpu_model=h100, gpus=4, name="picky", offer={"min_gpus": 4})
    other = online_server(organization=bob.org, gpu_model=h100, gpus=8, name="other")
    lease = rent(alice, gpu_count=4)
    assert {g["server"] for g in lease["gpus"]} == {picky.pk}
    resize = f"/api/v1/leases/{lease['id']}/resize/"
    assert alice.api.post(resize, {"gpu_count": 6}, format="json").status_code == 200  # 2 more on `other`
    # Down to 3: `other`'s 2 go, and a third would leave `picky` with 3 of its minimum 4.
    refused_body = alice.api.post(resize, {"gpu_count": 3}, format="json")
    assert refused_body.status_code == 400
    assert "minimum" in refused_body.json()["error"]["fields"]["gpu_count"][0]
    assert Allocation.objects.filter(lease_id=lease["id"], period__upper_inf=True).count() == 6
    shrunk = alice.api.post(resize, {"gpu_count": 4}, format="json")
    assert shrunk.status_code == 200
    assert Counter(g["server"] for g in shrunk.json()["gpus"]) == {picky.pk: 4}
    assert not Allocation.objects.filter(server=other, period__upper_inf=True).exists()


def test_pinning_an_offer_places_on_its_server(alice, bob, rack):
    pinned = offer_on(rack[2])
    lease = rent(alice, gpu_count=3, offer=pinned.pk)
    assert {g["server"] for g in lease["gpus"]} == {rack[2].pk}
    assert lease["offer"] == pinned.pk and lease["server"] == rack[2].pk


def test_pinning_an_offer_that_does_not_price_the_plan_is_400(alice, bob, h100):
    server = online_server(
        organization=bob.org,
        gpu_model=h100,
        offer={
            "server_month_price": None,
            "server_month_interruptible_price": None,
            "card_hour_interruptible_price": None,
        },
    )
    offer = offer_on(server)
    other = online_server(organization=bob.org, gpu_model=h100)
    cases = [
        ({"plan": "server_month", "servers": 1, "end_at": later(days=30), "offer": offer.pk}, "offer"),
        ({"gpu_count": 1, "interruptible": True, "offer": offer.pk}, "offer"),
        ({"gpu_count": 1, "offer": offer.pk, "server": other.pk}, "server"),
    ]
    for body, field in cases:
        response = post(alice, **body)
        assert response.status_code == 400, (body, response.content)
        assert field in response.json()["error"]["fields"], response.json()
    Offer.objects.filter(pk=offer.pk).update(delisted_at=timezone.now())
    delisted = post(alice, gpu_count=1, offer=offer.pk)
    assert delisted.status_code == 400 and "offer" in delisted.json()["error"]["fields"]
    assert not Lease.objects.exists()


# --- what a lease costs ---------------------------------------------------------------------------------------


def test_the_lease_price_is_the_offers_price_for_each_plan(alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=8)
    end = later(days=30)
    cases = [
        ({"gpu_count": 1}, "2.500000"),
        ({"gpu_count": 1, "interruptible": True}, "1.250000"),
        ({"plan": "server_month", "servers": 1, "end_at": end}, None),
        ({"plan": "pflops_year", "pflops": "0.9", "end_at": end}, "150000.000000"),
    ]
    # One lease at a time on the single server, so each sees the same offer.
    for body, price in cases:
        lease = rent(alice, **body)
        assert lease["currency"] == "USD"
        if price is not None:
            assert lease["unit_price"] == price, body
        else:
            assert lease["unit_price"] == "12000.000000"
        alice.api.post(f"/api/v1/leases/{lease['id']}/end/")


def test_pflops_year_cards_share_the_contract_and_the_quote_is_their_weighted_mean(alice, bob, h100, a100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4, offer={"pflops_year_price": Decimal("200000")})
    online_server(organization=bob.org, gpu_model=a100, gpus=4, offer={"pflops_year_price": Decimal("120000")})
    lease = rent(alice, plan="pflops_year", pflops="4.5", end_at=later(days=365))
    rows = list(Allocation.objects.filter(lease_id=lease["id"]))
    assert {row.server.gpu_model_id for row in rows} == {h100.pk, a100.pk}  # the test's premise: a mixed lease
    # Each card's share of the contract, by its rated TFLOPS; the shares add up to the contract.
    assert abs(sum(row.units for row in rows) - Decimal("4.5")) < Decimal("1e-9")
    quote = sum(row.units * row.unit_price for row in rows) / sum(row.units for row in rows)
    assert Decimal(lease["unit_price"]) == quote.quantize(PRICE_PLACES)


def test_a_price_in_another_currency_is_converted_at_the_configured_rate(alice, h100):
    yuan_provider = ProviderFactory(currency="CNY")
    server = online_server(
        organization=yuan_provider, gpu_model=h100, gpus=4, offer={"card_hour_price": Decimal("14.20")}
    )
    assert offer_on(server).currency == "CNY"
    lease = rent(alice, gpu_count=1)
    rate = settings.SUANLI_FX_RATES[("CNY", "USD")]
    assert lease["currency"] == "USD"
    assert lease["unit_price"] == str((Decimal("14.20") * rate).quantize(PRICE_PLACES))
    with override_settings(SUANLI_FX_RATES={("CNY", "USD"): Decimal("0.15")}):
        assert rent(alice, gpu_count=1)["unit_price"] == "2.130000"
    # The first lease keeps the rate it was priced at.
    assert alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["unit_price"] == lease["unit_price"]
    # Priced in the offer's own currency for a renter who pays in it: no conversion.
    yuan_renter = make_persona(OrganizationFactory(currency="CNY"))
    same = rent(yuan_renter, gpu_count=1)
    assert same["currency"] == "CNY" and same["unit_price"] == "14.200000"


def test_a_dollar_offer_is_converted_for_a_renter_paying_in_yuan(bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=2)
    yuan_renter = make_persona(OrganizationFactory(currency="CNY"))
    lease = rent(yuan_renter, gpu_count=1)
    assert lease["currency"] == "CNY"
    assert lease["unit_price"] == str(
        (Decimal("2.5") * settings.SUANLI_FX_RATES[("USD", "CNY")]).quantize(PRICE_PLACES)
    )


@override_settings(SUANLI_FX_RATES={})
def test_without_an_exchange_rate_a_foreign_currency_offer_is_not_rented(alice, h100):
    online_server(organization=ProviderFactory(currency="CNY"), gpu_model=h100, gpus=2)
    response = post(alice, gpu_count=1)
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_capacity"
    assert not Lease.objects.exists() and not Allocation.objects.exists()


def test_a_lease_across_two_servers_pays_each_servers_price_and_quotes_the_mean(alice, bob, h100):
    cheap = online_server(
        organization=bob.org, gpu_model=h100, gpus=4, name="cheap", offer={"card_hour_price": Decimal("2")}
    )
    dear = online_server(
        organization=bob.org, gpu_model=h100, gpus=4, name="dear", offer={"card_hour_price": Decimal("3")}
    )
    lease = rent(alice, gpu_count=6)
    per_server = Counter(g["server"] for g in lease["gpus"])
    assert set(per_server) == {cheap.pk, dear.pk} and sum(per_server.values()) == 6
    assert prices_by_server(lease["id"]) == {cheap.pk: {Decimal("2")}, dear.pk: {Decimal("3")}}
    mean = (per_server[cheap.pk] * Decimal(2) + per_server[dear.pk] * Decimal(3)) / 6
    assert lease["unit_price"] == str(mean.quantize(PRICE_PLACES))


def test_resize_keeps_the_leases_price_for_a_server_after_the_offer_changes(alice, bob, h100):
    first = online_server(
        organization=bob.org, gpu_model=h100, gpus=4, name="first", offer={"card_hour_price": Decimal("2")}
    )
    second = online_server(
        organization=bob.org, gpu_model=h100, gpus=4, name="second", offer={"card_hour_price": Decimal("3")}
    )
    lease = rent(alice, gpu_count=2)
    assert {g["server"] for g in lease["gpus"]} == {first.pk} and lease["unit_price"] == "2.000000"
    offer = offer_on(first)
    changed = bob.api.patch(f"/api/v1/offers/{offer.pk}/", {"prices": {"card_hour": "5.00"}}, format="json")
    assert changed.status_code == 200, changed.content
    grown = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 4}, format="json")
    assert grown.status_code == 200, grown.content
    assert {g["server"] for g in grown.json()["gpus"]} == {first.pk}
    assert prices_by_server(lease["id"]) == {first.pk: {Decimal("2")}}
    # A server new to the lease is priced as its offer stands now.
    grown = alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 6}, format="json")
    assert grown.status_code == 200, grown.content
    assert prices_by_server(lease["id"]) == {first.pk: {Decimal("2")}, second.pk: {Decimal("3")}}
    assert grown.json()["unit_price"] == "2.000000"  # the quote made at creation


def _fail(gpu: Gpu) -> None:
    GpuHealthEvent.objects.create(
        gpu=gpu, server=gpu.server, at=timezone.now(), from_health="healthy", to_health="failed", reason="XID 79"
    )
    Gpu.objects.filter(pk=gpu.pk).update(health="failed")


def test_a_failover_replacement_keeps_the_price_of_the_card_it_replaces(alice, bob, h100):
    home = online_server(
        organization=bob.org, gpu_model=h100, gpus=2, name="home", offer={"card_hour_price": Decimal("2")}
    )
    spare = online_server(
        organization=bob.org, gpu_model=h100, gpus=2, name="spare", offer={"card_hour_price": Decimal("3")}
    )
    lease = rent(alice, gpu_count=2, offer=offer_on(home).pk)
    failed = Gpu.objects.get(uuid=lease["gpus"][0]["uuid"])
    _fail(failed)
    assert lifecycle.leases_run()["replaced"] == 1
    held = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()
    assert {g["server"] for g in held["gpus"]} == {home.pk, spare.pk} and failed.uuid not in {
        g["uuid"] for g in held["gpus"]
    }
    assert prices_by_server(lease["id"]) == {home.pk: {Decimal("2")}, spare.pk: {Decimal("2")}}
    assert held["unit_price"] == "2.000000"
