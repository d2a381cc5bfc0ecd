"""Storefront offer pages: search (filters, sorting, currency), an offer's page, the estimate and renting."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import IdempotencyRecord, Role
from inventory.models import Gpu, Offer, ServerOutage
from scheduler.models import Lease
from tests.factories import GpuModelFactory, MembershipFactory, ProviderFactory, online_server


@pytest.fixture
def h100(db):
    return GpuModelFactory(
        slug="store-h100", name="Store H100", memory_gb=80, fp16_tflops="989.40", interconnect="nvlink"
    )


@pytest.fixture
def l40s(db):
    return GpuModelFactory(
        slug="store-l40s", name="Store L40S", memory_gb=48, fp16_tflops="362.00", interconnect="pcie"
    )


@pytest.fixture
def shelf(bob, h100, l40s):
    """Bob lists an H100 server in cn-east-1 (2.50/card-hour) and an L40S server in cn-north-1 (1.10)."""
    east = online_server(organization=bob.org, gpu_model=h100, name="bob-east", region="cn-east-1")
    north = online_server(
        organization=bob.org,
        gpu_model=l40s,
        name="bob-north",
        region="cn-north-1",
        offer={"card_hour_price": Decimal("1.10"), "card_hour_interruptible_price": Decimal("0.50")},
    )
    return {"east": east.offers.get(), "north": north.offers.get()}


def _ids(body: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="offer-card" id="offer-(\d+)"', body)]


def _rent_data(**overrides) -> dict:
    return {"plan": "card_hour", "gpu_count": 2, "months": 1, "term_years": 1, "idempotency_key": "k-1", **overrides}


def _minute(moment):
    return moment.replace(second=0, microsecond=0)


# --- search -----------------------------------------------------------------------------------------------


def test_the_search_is_public_and_shows_each_offer_with_free_cards_prices_and_reliability(client, shelf):
    response = client.get("/offers/")
    assert response.status_code == 200
    body = response.content.decode()
    assert _ids(body) == [shelf["north"].pk, shelf["east"].pk], "cheapest card-hour first"
    assert "8 × Store H100" in body and "Bob IDC" in body and "cn-east-1" in body and "NVLink" in body
    assert "8 of 8 cards" in body
    assert "USD 2.50" in body and "USD 12,000.00" in body and "USD 150,000.00" in body
    assert "100.0 %" in body
    assert f'href="/offers/{shelf["east"].pk}/"' in body


def test_free_cards_count_what_is_allocated_and_reliability_counts_outages(client, alice, shelf):
    from scheduler.services import lease_create

    east = shelf["east"]
    lease_create(org=alice.org, plan="card_hour", gpu_count=3, offer=east)
    Gpu.objects.filter(server=east.server, index=7).update(health="failed")
    type(east.server).objects.filter(pk=east.server_id).update(created_at=timezone.now() - timedelta(days=60))
    ServerOutage.objects.create(
        server=east.server, started_at=timezone.now() - timedelta(days=3), ended_at=timezone.now() - timedelta(days=2)
    )
    body = client.get("/offers/").content.decode()
    card = body[body.index(f'id="offer-{east.pk}"') :]
    assert "4 of 8 cards" in card[:2000]
    assert re.search(r"9[67]\.\d %", card[:2000]), "a day down in 30 is about 96.7 %"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"region": "cn-east-1"}, ["east"]),
        ({"interconnect": "pcie"}, ["north"]),
        ({"min_price": "2"}, ["east"]),
        ({"max_price": "2"}, ["north"]),
        ({"min_price": "1", "max_price": "3"}, ["north", "east"]),
        ({"plan": "server_month", "max_price": "12000"}, ["east", "north"]),
        ({"plan": "server_month", "max_price": "11999"}, []),
        ({"interruptible": "on", "max_price": "1"}, ["north"]),
        ({"min_gpus": "8"}, ["north", "east"]),
    ],
)
def test_filters_narrow_the_results(client, shelf, params, expected):
    body = client.get("/offers/", params).content.decode()
    assert _ids(body) == [shelf[name].pk for name in expected]


def test_filters_by_model_free_cards_and_reliability(client, alice, shelf, h100):
    from scheduler.services import lease_create

    lease_create(org=alice.org, plan="card_hour", gpu_count=6, offer=shelf["east"])
    assert _ids(client.get("/offers/", {"gpu_model": h100.pk}).content.decode()) == [shelf["east"].pk]
    assert _ids(client.get("/offers/", {"min_gpus": 3}).content.decode()) == [shelf["north"].pk]
    ServerOutage.objects.create(server=shelf["north"].server, started_at=timezone.now() - timedelta(days=6))
    assert _ids(client.get("/offers/", {"min_reliability": "99"}).content.decode()) == [shelf["east"].pk]


def test_sorting_orders_the_results(client, alice, shelf):
    from scheduler.services import lease_create

    lease_create(org=alice.org, plan="card_hour", gpu_count=5, offer=shelf["north"])
    north, east = shelf["north"].pk, shelf["east"].pk
    assert _ids(client.get("/offers/", {"ordering": "price"}).content.decode()) == [north, east]
    assert _ids(client.get("/offers/", {"ordering": "-price"}).content.decode()) == [east, north]
    assert _ids(client.get("/offers/", {"ordering": "-gpus_free"}).content.decode()) == [east, north]
    assert _ids(client.get("/offers/", {"ordering": "newest"}).content.decode()) == [north, east]


def test_results_come_a_page_at_a_time(client, bob, h100):
    for i in range(14):
        online_server(organization=bob.org, gpu_model=h100, name=f"rack-{i:02d}", gpus=1)
    first = client.get("/offers/").content.decode()
    assert len(_ids(first)) == 12 and "14 offers" in first and "Page 1 of 2" in first
    second = client.get("/offers/", {"page": 2}).content.decode()
    assert len(_ids(second)) == 2
    assert not set(_ids(first)) & set(_ids(second))


def test_htmx_gets_just_the_results_and_the_form_works_without_it(client, shelf):
    full = client.get("/offers/", {"region": "cn-east-1"}).content.decode()
    assert '<form id="offer-filters"' in full and 'method="get"' in full and 'action="/offers/"' in full
    assert 'hx-get="/offers/"' in full and 'hx-target="#offer-results"' in full
    partial = client.get("/offers/", {"region": "cn-east-1"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="offer-results")
    body = partial.content.decode()
    assert body.lstrip().startswith('<section id="offer-results"') and "<html" not in body
    assert _ids(body) == [shelf["east"].pk]
    assert "HX-Request" in partial["Vary"]


def test_a_bad_filter_is_reported_beside_its_field_and_the_rest_still_filters(client, shelf):
    body = client.get("/offers/", {"min_gpus": "lots", "region": "cn-north-1"}).content.decode()
    assert 'id="id_min_gpus_errors"' in body and 'aria-describedby="id_min_gpus_errors"' in body
    assert _ids(body) == [shelf["north"].pk]


def test_prices_show_in_the_viewers_currency_with_the_offers_own_beside(client, alice, h100):
    cny_provider = ProviderFactory(name="Shanghai IDC", currency="CNY")
    server = online_server(organization=cny_provider, gpu_model=h100, name="sh-01")
    offer = server.offers.get()
    assert offer.currency == "CNY"
    client.force_login(alice.user)
    body = client.get("/offers/").content.decode()
    # 2.50 CNY at 0.1408 is 0.3520 USD per card-hour; 12,000 CNY a month is 1,689.60 USD.
    assert "USD 0.3520" in body and "CNY 2.50" in body and "USD 1,689.60" in body
    asked_in_cny = client.get("/offers/", {"currency": "CNY"}).content.decode()
    assert "CNY 2.50" in asked_in_cny and "USD 0.3520" not in asked_in_cny


def test_max_price_is_read_in_the_currency_the_prices_are_shown_in(client, alice, shelf, h100):
    """Bob's USD offers (1.10 and 2.50 a card-hour) and a CNY one at 2.50 CNY (0.3520 USD): the ceiling is in the
    currency shown, the organisation's, else the language's, never in each offer's own."""
    cny = online_server(organization=ProviderFactory(currency="CNY"), gpu_model=h100, name="sh-03").offers.get()
    anonymous_en = _ids(client.get("/offers/", {"max_price": "1"}).content.decode())
    assert anonymous_en == [cny.pk], "USD: 0.3520 is under 1, 1.10 and 2.50 are not"
    anonymous_zh = _ids(client.get("/offers/", {"max_price": "3"}, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode())
    assert anonymous_zh == [cny.pk], "CNY: 2.50 CNY is under 3 CNY; 1.10 USD is 7.81 CNY"
    client.force_login(alice.user)
    assert alice.org.currency == "USD"
    signed_in_zh = client.get("/offers/", {"max_price": "1.5"}, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert _ids(signed_in_zh) == [cny.pk, shelf["north"].pk], "the organisation's USD, whatever the language"


def test_unlisted_offers_are_not_shown(client, bob, h100, shelf):
    Offer.objects.filter(pk=shelf["north"].pk).update(delisted_at=timezone.now())
    online_server(organization=bob.org, gpu_model=h100, name="offline", status="unreachable")
    online_server(organization=ProviderFactory(status="pending"), gpu_model=h100, name="pending-provider")
    assert _ids(client.get("/offers/").content.decode()) == [shelf["east"].pk]
    assert client.get(f"/offers/{shelf['north'].pk}/").status_code == 404


# --- the offer page ---------------------------------------------------------------------------------------


def test_the_offer_page_shows_hardware_live_availability_prices_and_the_rent_form(client, alice, shelf):
    offer = shelf["east"]
    client.force_login(alice.user)
    body = client.get(f"/offers/{offer.pk}/").content.decode()
    assert 'id="offer-hardware"' in body
    for fact in ("Store H100", "80 GB", "989.4 TFLOPS", "7.915 PFLOPS", "128", "2048 GB", "30000 GB", "25 Gbit/s"):
        assert fact in body, fact
    assert f'hx-get="/offers/{offer.pk}/availability/"' in body and 'hx-trigger="every 30s"' in body
    assert 'id="rent-form"' in body and 'name="idempotency_key"' in body
    assert f'hx-post="/offers/{offer.pk}/estimate/"' in body
    for plan in ("card_hour", "server_month", "pflops_year"):
        assert f'value="{plan}"' in body
    assert 'id="rent-submit"' in body
    availability = client.get(f"/offers/{offer.pk}/availability/").content.decode()
    assert '<div id="offer-availability"' in availability and "8</strong> / 8" in availability


def test_the_rent_form_offers_only_the_plans_the_offer_prices(client, alice, bob, h100):
    server = online_server(
        organization=bob.org,
        gpu_model=h100,
        name="hourly-only",
        offer={
            "server_month_price": None,
            "pflops_year_price": None,
            "server_month_interruptible_price": None,
            "pflops_year_interruptible_price": None,
        },
    )
    client.force_login(alice.user)
    body = client.get(f"/offers/{server.offers.get().pk}/").content.decode()
    assert 'value="card_hour"' in body and 'value="server_month"' not in body and 'value="pflops_year"' not in body


def test_visitors_see_the_estimate_but_sign_in_to_rent(client, shelf):
    offer = shelf["east"]
    body = client.get(f"/offers/{offer.pk}/").content.decode()
    assert "Sign in to rent" in body and 'id="rent-submit"' not in body
    response = client.post(f"/offers/{offer.pk}/", _rent_data())
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not Lease.objects.exists()


def test_a_provider_organisation_or_a_billing_member_cannot_rent(client, bob, alice, shelf):
    offer = shelf["east"]
    client.force_login(bob.user)
    assert "switch to a customer organisation" in client.get(f"/offers/{offer.pk}/").content.decode()
    assert client.post(f"/offers/{offer.pk}/", _rent_data()).status_code == 403
    accountant = MembershipFactory(organization=alice.org, role=Role.BILLING).user
    client.force_login(accountant)
    assert client.post(f"/offers/{offer.pk}/", _rent_data()).status_code == 403
    assert not Lease.objects.exists()


# --- the estimate -----------------------------------------------------------------------------------------


def _estimate(client, offer, **data) -> tuple[str, str]:
    response = client.post(f"/offers/{offer.pk}/estimate/", _rent_data(**data))
    assert response.status_code == 200
    body = response.content.decode()
    amount = re.search(r'<strong id="estimate-amount">([^<]+)</strong>', body)
    return (amount.group(1) if amount else ""), body


def test_the_estimate_is_price_times_cards_times_hours(client, alice, shelf):
    client.force_login(alice.user)
    start = _minute(timezone.now() + timedelta(days=1))
    amount, body = _estimate(
        client,
        shelf["east"],
        start_at=start.strftime("%Y-%m-%dT%H:%M"),
        end_at=(start + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
    )
    assert amount == "USD 15.00", body  # 2.50 × 2 cards × 3 h
    assert "USD 2.50 × 2 cards × 3 h" in body


def test_an_open_ended_card_hour_estimate_is_a_rate_billed_per_second(client, alice, shelf):
    client.force_login(alice.user)
    amount, body = _estimate(client, shelf["east"], gpu_count=4)
    assert amount == "USD 10.00 per hour"
    assert "billed per second" in body


def test_the_estimate_of_the_other_plans_and_interruptible_prices(client, alice, shelf):
    client.force_login(alice.user)
    offer = shelf["east"]
    amount, _body = _estimate(client, offer, plan="pflops_year", pflops="2.5", term_years=1, gpu_count="")
    # 150,000 per PFLOPS-year × 2.5 PFLOPS × one calendar year (365 or 366 days of 365).
    assert amount in ("USD 375,000.00", "USD 376,027.40")
    amount, body = _estimate(client, offer, plan="server_month", months=2, gpu_count="")
    figure = Decimal(amount.removeprefix("USD ").replace(",", ""))
    assert Decimal("23000") < figure < Decimal("25000"), body  # two calendar months, pro-rated as billed
    assert "server-months" in body
    start = _minute(timezone.now() + timedelta(days=1))
    amount, _body = _estimate(
        client,
        offer,
        interruptible="on",
        start_at=start.strftime("%Y-%m-%dT%H:%M"),
        end_at=(start + timedelta(hours=10)).strftime("%Y-%m-%dT%H:%M"),
    )
    assert amount == "USD 25.00"  # 1.25 × 2 × 10


def test_the_estimate_converts_an_offer_in_another_currency(client, alice, h100):
    offer = online_server(organization=ProviderFactory(currency="CNY"), gpu_model=h100, name="sh-02").offers.get()
    client.force_login(alice.user)
    start = _minute(timezone.now() + timedelta(days=1))
    amount, body = _estimate(
        client,
        offer,
        start_at=start.strftime("%Y-%m-%dT%H:%M"),
        end_at=(start + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
    )
    assert amount == "USD 2.11", body  # 0.352 × 2 × 3 = 2.112
    assert "CNY 2.50" in body


def test_the_estimate_asks_for_what_it_lacks(client, alice, shelf):
    client.force_login(alice.user)
    amount, body = _estimate(client, shelf["east"], gpu_count="")
    assert amount == "" and "Enter the number of cards" in body


# --- renting ----------------------------------------------------------------------------------------------


def test_renting_two_cards_creates_a_lease_and_shows_its_page_with_cards_and_charts(client, alice, shelf):
    offer = shelf["east"]
    client.force_login(alice.user)
    response = client.post(f"/offers/{offer.pk}/", _rent_data(gpu_count=2))
    lease = Lease.objects.get(organization=alice.org)
    assert response.status_code == 302 and response["Location"] == f"/leases/{lease.pk}/"
    assert (lease.plan, lease.state, lease.gpu_count, lease.offer_id, lease.end_at) == (
        "card_hour",
        "active",
        2,
        offer.pk,
        None,
    )
    page = client.get(response["Location"]).content.decode()
    assert 'id="lease-cards"' in page
    for allocation in lease.allocations.select_related("gpu"):
        assert allocation.gpu.uuid in page
    assert f'data-telemetry-url="/api/v1/leases/{lease.pk}/telemetry/"' in page
    assert '<script defer src="/static/js/telemetry_charts.js"></script>' in page
    assert "is yours" in page


def test_renting_a_server_month_and_a_pflops_year_sets_the_end_from_the_months_and_the_term(client, alice, bob, h100):
    month_offer = online_server(organization=bob.org, gpu_model=h100, name="m-1").offers.get()
    year_offer = online_server(organization=bob.org, gpu_model=h100, name="y-1").offers.get()
    client.force_login(alice.user)
    start = _minute(timezone.now() + timedelta(days=2))
    client.post(
        f"/offers/{month_offer.pk}/",
        _rent_data(plan="server_month", months=3, start_at=start.strftime("%Y-%m-%dT%H:%M"), idempotency_key="m"),
    )
    lease = Lease.objects.get(offer=month_offer)
    assert (lease.state, lease.servers, lease.gpu_count, lease.start_at) == ("scheduled", 1, 8, start)
    assert 88 <= (lease.end_at - lease.start_at).days <= 92
    client.post(
        f"/offers/{year_offer.pk}/", _rent_data(plan="pflops_year", pflops="3", term_years=1, idempotency_key="y")
    )
    lease = Lease.objects.get(offer=year_offer)
    assert lease.pflops == Decimal("3.000") and lease.gpu_count == 4  # 4 × 0.9894 PFLOPS covers 3
    assert 365 <= (lease.end_at - lease.start_at).days <= 366


def test_a_double_submission_rents_once_and_both_land_on_the_same_lease(client, alice, shelf):
    offer = shelf["east"]
    client.force_login(alice.user)
    first = client.post(f"/offers/{offer.pk}/", _rent_data(idempotency_key="same-form"))
    second = client.post(f"/offers/{offer.pk}/", _rent_data(idempotency_key="same-form"))
    assert Lease.objects.filter(organization=alice.org).count() == 1
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"]
    assert IdempotencyRecord.objects.filter(organization=alice.org).count() == 1
    # A freshly rendered form has a fresh key: renting again is a second lease.
    keys = re.findall(r'name="idempotency_key" value="([^"]+)"', client.get(f"/offers/{offer.pk}/").content.decode())
    assert len(keys) == 1 and keys[0] != "same-form"
    client.post(f"/offers/{offer.pk}/", _rent_data(idempotency_key=keys[0]))
    assert Lease.objects.filter(organization=alice.org).count() == 2


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"gpu_count": 9}, "gpu_count", "This server has 8 cards."),
        ({"gpu_count": ""}, "gpu_count", "Required for this plan."),
        ({"plan": "server_month", "months": ""}, "months", "Required for this plan."),
        ({"plan": "pflops_year", "pflops": "", "term_years": 1}, "pflops", "Required for this plan."),
        ({"plan": "pflops_year", "pflops": "9", "term_years": 1}, "pflops", "At most 7.915 can be rented"),
        ({"start_at": "2020-01-01T00:00"}, "start_at", "Must not be in the past."),
        ({"end_at": "2020-01-01T00:00"}, "end_at", "Must be after the start"),
        ({"plan": "weekly"}, "plan", "Select a valid choice."),
    ],
)
def test_field_errors_are_shown_beside_the_field_and_nothing_is_rented(client, alice, shelf, data, field, text):
    client.force_login(alice.user)
    response = client.post(f"/offers/{shelf['east'].pk}/", _rent_data(**data))
    assert response.status_code == 400
    body = response.content.decode()
    errors = re.search(rf'<small id="id_{field}_errors" class="field-error">([^<]*)</small>', body)
    assert errors and text in errors.group(1), body[body.find("field-error") - 200 : body.find("field-error") + 300]
    assert f'aria-describedby="id_{field}_errors"' in body
    assert not Lease.objects.exists()
    assert 'name="idempotency_key" value="k-1"' not in body, "a re-rendered form gets a fresh key"


def test_min_cards_and_an_offer_end_are_checked_beside_their_fields(client, alice, bob, h100):
    until = timezone.now() + timedelta(days=10)
    offer = online_server(
        organization=bob.org, gpu_model=h100, name="short", offer={"min_gpus": 4, "available_until": until}
    ).offers.get()
    client.force_login(alice.user)
    body = client.post(f"/offers/{offer.pk}/", _rent_data(gpu_count=2)).content.decode()
    assert "This offer rents at least 4 cards." in body
    body = client.post(f"/offers/{offer.pk}/", _rent_data(gpu_count=4)).content.decode()
    assert re.search(r'id="id_end_at_errors"[^>]*>This offer ends at', body)
    body = client.post(f"/offers/{offer.pk}/", _rent_data(plan="server_month", months=1)).content.decode()
    assert re.search(r'id="id_months_errors"[^>]*>This offer ends at', body)
    assert not Lease.objects.exists()


def test_no_capacity_is_said_at_the_top_and_holds_nothing(client, alice, shelf):
    offer = shelf["east"]
    client.force_login(alice.user)
    client.post(f"/offers/{offer.pk}/", _rent_data(gpu_count=6, idempotency_key="a"))
    response = client.post(f"/offers/{offer.pk}/", _rent_data(gpu_count=4, idempotency_key="b"))
    assert response.status_code == 409
    body = response.content.decode()
    assert 'id="rent-errors"' in body and "Not enough free cards on this server" in body
    assert Lease.objects.filter(organization=alice.org).count() == 1


def test_a_billing_hold_is_said_at_the_top(client, alice, shelf):
    alice.org.billing_hold = True
    alice.org.save(update_fields=["billing_hold"])
    client.force_login(alice.user)
    response = client.post(f"/offers/{shelf['east'].pk}/", _rent_data())
    assert response.status_code == 403
    assert "overdue invoice" in response.content.decode()
    assert not Lease.objects.exists()


def test_without_javascript_the_estimate_button_updates_the_estimate_and_rents_nothing(client, alice, shelf):
    client.force_login(alice.user)
    response = client.post(f"/offers/{shelf['east'].pk}/", _rent_data(gpu_count=3, action="estimate"))
    assert response.status_code == 200
    assert "USD 7.50 per hour" in response.content.decode()
    assert not Lease.objects.exists()


# --- language ---------------------------------------------------------------------------------------------


def test_the_offer_pages_speak_chinese(client, alice, shelf):
    client.force_login(alice.user)
    search = client.get("/offers/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in ("租用 GPU", "按卡时计费", "可靠性", "排序方式", "8 / 8 张卡", "2 个报价", "查看并租用"):
        assert words in search, words
    page = client.get(f"/offers/{shelf['east'].pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in ("硬件", "可用情况", "估价", "立即租用", "开始时间（可选，UTC）", "每小时 USD 2.50"):
        assert words in page, words
    estimate = client.post(
        f"/offers/{shelf['east'].pk}/estimate/", _rent_data(), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "按秒计费" in estimate and "USD 2.50 × 2 张卡" in estimate
    invalid = client.post(f"/offers/{shelf['east'].pk}/", _rent_data(gpu_count=9), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "这台服务器只有 8 张卡。" in invalid.content.decode()
