"""Provider offer and earnings pages; staff catalogue, close-period and fleet pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from accounts.models import Role
from billing.metering import meter
from billing.models import Invoice, Payout, ProviderStatement
from inventory.models import Gpu, Offer
from scheduler import services as scheduler
from tests.conftest import make_persona
from tests.factories import GpuFactory, GpuModelFactory, OfferFactory, OrganizationFactory, ServerFactory, online_server
from tests.support.offer_forms import offer_form, offer_form_key

# --- who may see what -----------------------------------------------------------------------------------

PROVIDER_PAGES = ["/provider/offers/", "/provider/offers/new/", "/provider/offers/1/edit/", "/provider/earnings/"]
STAFF_PAGES = ["/staff/catalogue/", "/staff/close-period/", "/staff/fleet/"]


@pytest.mark.parametrize("path", PROVIDER_PAGES + STAFF_PAGES)
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/provider/offers/", "/provider/offers/new/", "/provider/earnings/"])
def test_a_customer_organisation_has_no_provider_pages(client, alice, path):
    client.force_login(alice.user)
    assert client.get(path).status_code == 403
    assert 'href="/provider/offers/"' not in client.get("/dashboard/").content.decode()


@pytest.mark.parametrize("path", STAFF_PAGES)
def test_staff_pages_are_refused_to_everyone_else(client, bob, path):
    client.force_login(bob.user)
    assert client.get(path).status_code == 403
    assert client.post(path, {"period": "2020-01"}).status_code in (403, 405)


@pytest.mark.parametrize("path", STAFF_PAGES)
def test_staff_see_the_staff_pages_and_the_fleet_link(client, staff, path):
    client.force_login(staff.user)
    response = client.get(path)
    assert response.status_code == 200
    assert 'href="/staff/fleet/"' in response.content.decode()


def test_providers_see_links_to_their_offers_and_earnings(client, bob):
    client.force_login(bob.user)
    body = client.get("/dashboard/").content.decode()
    assert 'href="/provider/offers/"' in body and 'href="/provider/earnings/"' in body
    assert 'href="/staff/fleet/"' not in body


# --- offers ---------------------------------------------------------------------------------------------


def test_the_offer_list_shows_bobs_live_and_delisted_offers_and_not_charlies(client, bob, charlie):
    live = OfferFactory(server=ServerFactory(organization=bob.org, name="bob-live"))
    old = OfferFactory(server=ServerFactory(organization=bob.org, name="bob-old"), delisted_at=timezone.now())
    OfferFactory(server=ServerFactory(organization=charlie.org, name="charlie-node"))
    client.force_login(bob.user)
    body = client.get("/provider/offers/").content.decode()
    assert "bob-live" in body and "bob-old" in body and "charlie-node" not in body
    assert body.index(f'id="offer-{live.pk}"') < body.index(f'id="offer-{old.pk}"')  # live first
    assert f"/provider/offers/{live.pk}/edit/" in body
    assert f"/provider/offers/{old.pk}/edit/" not in body  # a delisted offer cannot change
    row = body[body.index(f'id="offer-{live.pk}"') :].split("</tr>")[0]
    assert "2.50 USD" in row and "1.25" in row and "12000.00 USD" in row  # prices as entered, not 2.5000


def test_a_provider_lists_a_server_through_the_form(client, bob):
    server = ServerFactory(organization=bob.org, name="bob-node-01", gpu_count=8)
    client.force_login(bob.user)
    form = client.get(f"/provider/offers/new/?server={server.pk}").content.decode()
    assert "bob-node-01" in form and 'for="id_card_hour_price"' in form
    data = offer_form(
        server,
        form_key=offer_form_key(client),
        server_month_price="12000",
        min_gpus="2",
        available_until="2099-01-01T00:00",
    )
    response = client.post("/provider/offers/new/", data)
    assert response.status_code == 302 and response["Location"] == "/provider/offers/"
    offer = Offer.objects.get(server=server)
    assert offer.organization == bob.org
    assert offer.card_hour_price == Decimal("2.5") and offer.card_hour_interruptible_price == Decimal("1.2")
    assert offer.server_month_price == Decimal("12000") and offer.pflops_year_price is None
    assert offer.min_gpus == 2 and offer.currency == "USD"
    assert offer.available_until == datetime(2099, 1, 1, tzinfo=UTC)
    assert "bob-node-01 is listed." in client.get("/provider/offers/").content.decode()


def test_the_same_form_sent_twice_lists_the_server_once_without_an_error(client, bob):
    server = ServerFactory(organization=bob.org)
    client.force_login(bob.user)
    data = offer_form(server, form_key=offer_form_key(client))
    first = client.post("/provider/offers/new/", data)
    second = client.post("/provider/offers/new/", data)
    assert first.status_code == 302 and second.status_code == 302
    assert Offer.objects.filter(server=server).count() == 1
    assert "already sent" in client.get("/provider/offers/").content.decode()


def test_a_second_live_offer_is_a_friendly_error_beside_the_server(client, bob):
    server = ServerFactory(organization=bob.org, name="bob-listed")
    OfferFactory(server=server)
    waiting = ServerFactory(organization=bob.org, name="bob-waiting")
    client.force_login(bob.user)
    listing = client.get("/provider/offers/").content.decode()
    assert f'href="/provider/offers/new/?server={waiting.pk}"' in listing  # still to be listed
    assert f'href="/provider/offers/new/?server={server.pk}"' not in listing
    form = client.get("/provider/offers/new/").content.decode()
    assert form.index("bob-waiting") < form.index("bob-listed · 8× ")
    assert "already listed" in form
    response = client.post("/provider/offers/new/", offer_form(server, form_key=offer_form_key(client)))
    assert response.status_code == 400
    body = response.content.decode()
    assert 'id="id_server_errors"' in body and "already has a live offer" in body
    assert Offer.objects.filter(server=server).count() == 1


def test_price_errors_are_shown_beside_their_fields_and_the_form_can_be_sent_again(client, bob):
    server = ServerFactory(organization=bob.org, gpu_count=4)
    client.force_login(bob.user)
    key = offer_form_key(client)
    bad = offer_form(server, form_key=key, card_hour_interruptible_price="3", min_gpus="5")
    response = client.post("/provider/offers/new/", bad)
    assert response.status_code == 400
    body = response.content.decode()
    assert 'id="id_card_hour_interruptible_price_errors"' in body
    assert 'aria-describedby="id_card_hour_interruptible_price_errors"' in body
    assert 'id="id_min_gpus_errors"' in body and "At most 4" in body
    nothing = offer_form(server, form_key=key, card_hour_price="", card_hour_interruptible_price="")
    response = client.post("/provider/offers/new/", nothing)
    assert response.status_code == 400 and 'id="prices-errors"' in response.content.decode()
    assert not Offer.objects.exists()
    assert client.post("/provider/offers/new/", offer_form(server, form_key=key)).status_code == 302
    assert Offer.objects.filter(server=server).count() == 1


def test_another_tenants_server_cannot_be_listed(client, bob, charlie):
    foreign = ServerFactory(organization=charlie.org)
    client.force_login(bob.user)
    response = client.post("/provider/offers/new/", offer_form(foreign, form_key=offer_form_key(client)))
    assert response.status_code == 400 and 'id="id_server_errors"' in response.content.decode()
    assert not Offer.objects.exists()


def test_a_provider_changes_prices_and_running_leases_keep_theirs(client, bob, alice):
    server = online_server(organization=bob.org, gpus=8)
    offer = server.offers.get()
    lease = scheduler.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    client.force_login(bob.user)
    page = client.get(f"/provider/offers/{offer.pk}/edit/").content.decode()
    assert 'value="2.5' in page  # today's price filled in
    response = client.post(
        f"/provider/offers/{offer.pk}/edit/",
        offer_form(card_hour_price="3.75", card_hour_interruptible_price="", min_gpus="2", currency="CNY"),
    )
    assert response.status_code == 302
    offer.refresh_from_db()
    assert offer.card_hour_price == Decimal("3.75") and offer.card_hour_interruptible_price is None
    assert offer.min_gpus == 2 and offer.currency == "CNY"
    lease.refresh_from_db()
    assert lease.unit_price == Decimal("2.5")


def test_a_provider_delists_an_offer_and_a_second_press_changes_nothing(client, bob):
    offer = OfferFactory(server=ServerFactory(organization=bob.org))
    client.force_login(bob.user)
    assert client.post(f"/provider/offers/{offer.pk}/delist/").status_code == 302
    offer.refresh_from_db()
    first = offer.delisted_at
    assert first is not None
    assert client.post(f"/provider/offers/{offer.pk}/delist/").status_code == 302
    offer.refresh_from_db()
    assert offer.delisted_at == first
    edit = client.get(f"/provider/offers/{offer.pk}/edit/")
    assert edit.status_code == 302
    assert "cannot change" in client.get("/provider/offers/").content.decode()


@pytest.mark.parametrize("action", ["edit", "delist"])
def test_another_tenants_offer_is_not_found(client, bob, charlie, action):
    foreign = OfferFactory(server=ServerFactory(organization=charlie.org))
    client.force_login(bob.user)
    if action == "edit":
        assert client.get(f"/provider/offers/{foreign.pk}/edit/").status_code == 404
        assert client.post(f"/provider/offers/{foreign.pk}/edit/", offer_form()).status_code == 404
    else:
        assert client.post(f"/provider/offers/{foreign.pk}/delist/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.delisted_at is None and foreign.card_hour_price == Decimal("2.5")


def test_a_billing_member_sees_offers_but_cannot_change_them(client, bob):
    offer = OfferFactory(server=ServerFactory(organization=bob.org))
    accountant = make_persona(bob.org, role=Role.BILLING)
    client.force_login(accountant.user)
    body = client.get("/provider/offers/").content.decode()
    assert response_ok(body) and f"/provider/offers/{offer.pk}/edit/" not in body
    assert client.get("/provider/offers/new/").status_code == 403
    assert client.post(f"/provider/offers/{offer.pk}/delist/").status_code == 403
    offer.refresh_from_db()
    assert offer.delisted_at is None


def response_ok(body: str) -> bool:
    return 'id="offer-table"' in body


# --- earnings -------------------------------------------------------------------------------------------


def test_earnings_show_each_statement_with_its_payout_and_not_another_tenants(client, bob, charlie, staff):
    march = ProviderStatement.objects.create(
        organization=bob.org,
        period="2026-03",
        currency="USD",
        gross=Decimal("1000.00"),
        take_rate=Decimal("0.15"),
        commission=Decimal("150.00"),
        credits=Decimal("12.34"),
        net=Decimal("837.66"),
        state="paid",
    )
    ProviderStatement.objects.create(
        organization=bob.org,
        period="2026-04",
        currency="USD",
        gross=Decimal("200.00"),
        take_rate=Decimal("0.15"),
        commission=Decimal("30.00"),
        net=Decimal("170.00"),
    )
    ProviderStatement.objects.create(
        organization=charlie.org,
        period="2026-03",
        currency="USD",
        gross=Decimal("5555.00"),
        take_rate=Decimal("0.15"),
        commission=Decimal("833.25"),
        net=Decimal("4721.75"),
    )
    Payout.objects.create(
        statement=march, organization=bob.org, method="bank", amount=march.net, currency="USD", state="failed"
    )
    Payout.objects.create(
        statement=march,
        organization=bob.org,
        method="bank",
        amount=march.net,
        currency="USD",
        state="paid",
        reference="BANK-REF-7",
        paid_at=datetime(2026, 4, 5, tzinfo=UTC),
    )
    client.force_login(bob.user)
    body = client.get("/provider/earnings/").content.decode()
    for figure in ("1000.00", "150.00", "12.34", "837.66", "170.00", "BANK-REF-7"):
        assert figure in body
    assert "5555.00" not in body and "4721.75" not in body
    assert body.index("2026-04") < body.index("2026-03")
    statements = body[body.index('id="statements"') :]
    assert "Paid" in statements and "Not paid yet" in statements and "Payout failed" not in statements
    assert "net 1007.66, paid 837.66, to be paid 170.00" in body


def test_earnings_show_this_month_so_far_from_metered_usage(client, alice, bob, charlie):
    start = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        online_server(organization=bob.org, gpus=4)
        online_server(organization=charlie.org, gpus=4, offer={"card_hour_price": Decimal("99")})
        lease = scheduler.lease_create(org=alice.org, plan="card_hour", gpu_count=2, server=bob.org.servers.get())
        clock.move_to(start + timedelta(hours=3))
        scheduler.lease_end(lease=lease)
        meter(until=start + timedelta(hours=3))
        client.force_login(bob.user)
        body = client.get("/provider/earnings/").content.decode()
    this_month = body[body.index('id="this-month-USD"') : body.index('id="statements-title"')]
    assert "2026-05" in body
    assert "15.00 USD" in this_month  # 2 cards x 3 h x 2.50
    assert "2.25 USD" in this_month and "12.75 USD" in this_month  # 15% commission, net
    assert "6.00" in this_month  # card-hours


# --- staff: catalogue and close period ------------------------------------------------------------------


def test_the_catalogue_lists_models_with_their_servers_and_cards(client, staff):
    model = GpuModelFactory(name="Test H999", fp16_tflops="1234.50")
    server = ServerFactory(gpu_model=model)
    GpuFactory(server=server, index=0)
    GpuFactory(server=server, index=1)
    GpuModelFactory(name="Old Card", active=False)
    client.force_login(staff.user)
    body = client.get("/staff/catalogue/").content.decode()
    row = body[body.index("Test H999") :].split("</tr>")[0]
    assert "1234.5" in row and ">1</td>" in row and ">2</td>" in row
    assert f"/admin/inventory/gpumodel/{model.pk}/change/" in row
    assert "Old Card" in body and "Inactive" in body


def test_closing_a_month_that_is_not_over_is_refused_beside_the_field(client, staff):
    client.force_login(staff.user)
    now = timezone.now()
    label = f"{now.year + 1:04d}-01"
    response = client.post("/staff/close-period/", {"period": label})
    assert response.status_code == 400
    body = response.content.decode()
    assert 'id="id_period_errors"' in body and "is not over yet" in body
    bad = client.post("/staff/close-period/", {"period": "2026-13"})
    assert bad.status_code == 400 and "YYYY-MM" in bad.content.decode()


def test_staff_close_a_month_and_see_what_was_made(client, staff, alice, bob):
    start = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        online_server(organization=bob.org, gpus=4)
        lease = scheduler.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
        clock.move_to(start + timedelta(hours=2))
        scheduler.lease_end(lease=lease)
        clock.move_to(datetime(2026, 6, 2, tzinfo=UTC))
        client.force_login(staff.user)
        assert "2026-05" in client.get("/staff/close-period/").content.decode()  # last month, filled in
        response = client.post("/staff/close-period/", {"period": "2026-05"}, follow=True)
        body = response.content.decode()
        assert "2026-05 is closed: 1 new invoices, 1 new provider statements." in body
        again = client.post("/staff/close-period/", {"period": "2026-05"}, follow=True).content.decode()
        assert "0 new invoices, 0 new provider statements" in again
    assert Invoice.objects.filter(organization=alice.org, period="2026-05").count() == 1
    assert ProviderStatement.objects.filter(organization=bob.org, period="2026-05").count() == 1
    closed = again[again.index('id="closed-periods"') :]
    assert "2026-05" in closed


# --- staff: fleet ---------------------------------------------------------------------------------------


def _card(server, index, *, health="healthy", util=None, reason="", fresh=True, **fields) -> Gpu:
    sample = None if util is None else {"utilization_pct": util, "memory_used_mb": 1024}
    when = timezone.now() - (timedelta(seconds=5) if fresh else timedelta(hours=2))
    return GpuFactory(
        server=server,
        index=index,
        health=health,
        health_reason=reason,
        health_changed_at=timezone.now() if health != "healthy" else None,
        last_sample=sample,
        last_sample_at=when if sample is not None else None,
        **fields,
    )


def _count(body: str, name: str) -> str:
    match = re.search(rf'data-count="{name}">([^<]*)<', body)
    assert match, name
    return match[1]


@pytest.fixture
def fleet(db):
    """Two providers, two models: 6 cards (4 healthy, 1 degraded, 1 failed), one silent, one drained."""
    h100, l40 = GpuModelFactory(name="Test H100"), GpuModelFactory(name="Test L40S")
    north, south = (
        OrganizationFactory(name="North IDC", kind="provider"),
        OrganizationFactory(name="South IDC", kind="provider"),
    )
    a = ServerFactory(organization=north, gpu_model=h100, name="north-1")
    b = ServerFactory(organization=south, gpu_model=l40, name="south-1")
    _card(a, 0, util=100)
    _card(a, 1, util=50)
    _card(a, 2, health="degraded", util=30, reason="ECC single-bit errors rising")
    _card(b, 0, util=0)
    _card(b, 1, health="failed", util=None, reason="XID 79: GPU fell off the bus")
    _card(b, 2, util=90, fresh=False, drained=True)  # silent: its sample is old
    return {"north": north, "south": south}


def test_the_fleet_counts_cards_by_health_and_averages_fresh_utilisation(client, staff, fleet):
    client.force_login(staff.user)
    body = client.get("/staff/fleet/").content.decode()
    assert _count(body, "total") == "6"
    assert _count(body, "healthy") == "4"
    assert _count(body, "degraded") == "1"
    assert _count(body, "failed") == "1"
    assert _count(body, "drained") == "1"
    assert _count(body, "silent") == "2"  # the failed card never reported, one card's sample is old
    assert _count(body, "avg_util") == "45.0%"  # (100 + 50 + 30 + 0) / 4
    groups = body[body.index('id="fleet-groups"') :]
    north = groups[groups.index("North IDC") :].split("</tr>")[0]
    assert "Test H100" in north and "60.0%" in north  # (100 + 50 + 30) / 3
    south = groups[groups.index("South IDC") :].split("</tr>")[0]
    assert "Test L40S" in south and "0.0%" in south
    cards = body[body.index('id="unhealthy-cards"') :]
    assert "XID 79: GPU fell off the bus" in cards and "ECC single-bit errors rising" in cards
    failed_only = client.get("/staff/fleet/?health=failed").content.decode()
    cards = failed_only[failed_only.index('id="unhealthy-cards"') :]
    assert "XID 79" in cards and "ECC single-bit" not in cards


def test_the_fleet_page_costs_the_same_queries_for_many_cards(client, staff, fleet, django_assert_max_num_queries):
    client.force_login(staff.user)
    client.get("/staff/fleet/")  # warm the session and the content types
    # 13: the page's own queries plus one for the funds banner that every page of a customer organisation
    # carries (billing.context_processors.funds_banner; the staff persona's organisation is a customer).
    with django_assert_max_num_queries(13) as few:
        client.get("/staff/fleet/")
    model = GpuModelFactory(name="Test A100")
    for n in range(30):
        server = ServerFactory(gpu_model=model, gpu_count=8)
        for index in range(4):
            _card(server, index, util=n, health="failed" if index == 3 else "healthy", reason="lost")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get("/staff/fleet/")
    assert _count(response.content.decode(), "total") == "126"


# --- Chinese --------------------------------------------------------------------------------------------


def test_the_pages_render_in_simplified_chinese(client, bob, staff, fleet):
    OfferFactory(server=ServerFactory(organization=bob.org))
    client.force_login(bob.user)
    offers = client.get("/provider/offers/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert 'lang="zh-hans"' in offers and "我的报价" in offers
    earnings = client.get("/provider/earnings/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "收益" in earnings
    client.force_login(staff.user)
    fleet_page = client.get("/staff/fleet/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "集群" in fleet_page and "故障" in fleet_page
