"""The balance pages (/balance/): what a customer sees of its money after a bank transfer and a running lease, the
per-day CSV, the top-up and spend-limit forms and their errors, who may do what; the funds banner on every page;
the lease page's end reason; the provider's live earnings."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client, RequestFactory
from django.utils import formats

from accounts.models import Role
from billing import ledger, metering
from billing.context_processors import funds_banner
from billing.funds import funds_check
from billing.models import FundsNotice, SpendLimit, TopUp
from scheduler import services
from scheduler.models import Lease
from tests.conftest import make_persona
from tests.factories import online_server
from tests.support.pages import assert_page_keeps_to_the_policy

# 2026-03-11 10:00 in Asia/Shanghai (the platform clock): the lease starts here.
START = datetime(2026, 3, 11, 2, 0, tzinfo=UTC)
NBSP = "\u00a0"
PRICES = {"card_hour_price": Decimal("2.0000")}


def usd(amount: str) -> str:
    return f"USD{NBSP}{amount}"


def _visible(body: str) -> str:
    return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", body))


def _get(client: Client, path: str, status: int = 200, **headers) -> str:
    response = client.get(path, **headers)
    assert response.status_code == status, (response.status_code, response.content[:300])
    return response.content.decode()


def _figure(body: str, name: str) -> str:
    """The text of one figure (<article id="figure-...">) of the page."""
    match = re.search(rf'<article id="figure-{name}">(.*?)</article>', body, re.S)
    assert match, name
    return _visible(match.group(1)).strip()


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def world(clock, alice, bob, settings):
    """Alice prepaid with a 100.00 bank transfer; two of bob's cards at 2.00 a card-hour rented at START (4.00 an
    hour), no tax."""
    settings.SUANLI_TAX_RATE = Decimal(0)
    settings.STRIPE_PUBLISHABLE_KEY = ""
    settings.STRIPE_SECRET_KEY = ""
    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency=alice.org.currency)
    ledger.adjustment_record(org=alice.org, amount="100.00", currency="USD", reference="BANK-2026-031")
    online_server(organization=bob.org, offer=PRICES, name="bob-node")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    return {"lease": lease, "clock": clock}


def _signed_in(persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


# --- the figures --------------------------------------------------------------------------------------------


def test_the_page_shows_the_balance_limit_available_month_to_date_burn_and_when_it_runs_out(world, alice):
    world["clock"].move_to(START + timedelta(hours=3))
    body = _get(_signed_in(alice), "/balance/")
    assert _figure(body, "balance") == f"Balance (paid in) {usd('100.00')}"
    assert _figure(body, "credit-limit") == f"Credit limit {usd('0.00')}"
    assert _figure(body, "available") == f"Available to spend {usd('88.00')}"  # 100 - 3 h x 4.00
    assert _figure(body, "month-to-date") == f"Spent in 2026-03 (with tax) {usd('12.00')}"
    assert _figure(body, "burn") == f"Running leases cost {usd('4.00')} an hour"
    # 88.00 at 4.00 an hour: 22 hours from now.
    runs_out = START + timedelta(hours=25)
    assert f'<time datetime="{runs_out.isoformat()}">' in body
    assert _figure(body, "runs-out") == f"Runs out {formats.date_format(runs_out, 'DATETIME_FORMAT')} UTC"
    assert '<span class="status" id="balance-mode">Prepaid</span>' in body


def test_each_lease_shows_its_plan_state_month_to_date_and_cost_an_hour(world, alice):
    world["clock"].move_to(START + timedelta(hours=3))
    lease = world["lease"]
    body = _get(_signed_in(alice), "/balance/")
    row = re.search(rf'<tr id="balance-lease-{lease.pk}">(.*?)</tr>', body, re.S).group(1)
    assert f'href="/leases/{lease.pk}/"' in row
    assert _visible(row).strip().split(" ") == [
        "Lease",
        str(lease.pk),
        "By",
        "the",
        "card-hour",
        "Active",
        usd("12.00"),
        usd("4.00"),
    ]


def test_an_ended_lease_costs_nothing_an_hour_and_the_money_never_runs_out_at_this_rate(world, alice):
    world["clock"].move_to(START + timedelta(hours=1, minutes=30))
    services.lease_end(lease=world["lease"])
    world["clock"].move_to(START + timedelta(hours=5))
    body = _get(_signed_in(alice), "/balance/")
    assert _figure(body, "available") == f"Available to spend {usd('94.00')}"
    assert _figure(body, "burn") == f"Running leases cost {usd('0.00')} an hour"
    assert _figure(body, "runs-out") == "Runs out Never at this rate"
    row = re.search(rf'<tr id="balance-lease-{world["lease"].pk}">(.*?)</tr>', body, re.S).group(1)
    assert "Ended" in row and usd("6.00") in row


def test_a_postpaid_organisation_without_a_limit_never_runs_out(clock, charlie):
    body = _get(_signed_in(charlie), "/balance/")
    assert _figure(body, "available") == "Available to spend No limit"
    assert _figure(body, "runs-out") == "Runs out Never: no credit limit"
    assert "Postpaid (monthly invoice)" in body
    assert "No spending this month yet." in body and "Nothing paid in yet." in body


def test_the_chart_has_a_bar_per_day_of_the_month_the_spending_days_as_tall_as_their_share(world, alice):
    world["clock"].move_to(START + timedelta(hours=16))  # 02:00 on the 12th, platform time: 14 h + 2 h
    body = _get(_signed_in(alice), "/balance/")
    bars = re.findall(
        r'<rect class="daily-bar" x="(\d+)" y="([\d.]+)" width="8" height="([\d.]+)"><title>(.*?)</title>', body
    )
    assert len(bars) == 31
    by_day = {title.split(":")[0]: (float(height), title) for _x, _y, height, title in bars}
    assert by_day["March 11"] == (95.0, f"March 11: {usd('56.00')}")
    assert by_day["March 12"][1] == f"March 12: {usd('8.00')}"
    assert by_day["March 12"][0] == pytest.approx(95 * 8 / 56, abs=0.001)
    assert by_day["March 1"][0] == 0 and by_day["March 31"][0] == 0
    figures = re.search(r'<table id="daily-spending">(.*?)</table>', body, re.S).group(1)
    assert re.findall(r'<time datetime="([\d-]+)">', figures) == ["2026-03-11", "2026-03-12"]


def test_the_ledger_lists_the_bank_transfer_with_its_reference(world, alice):
    body = _get(_signed_in(alice), "/balance/")
    ledger_table = _visible(re.search(r'<table class="stack-on-phone" id="ledger">(.*?)</table>', body, re.S).group(1))
    assert "Bank transfer" in ledger_table and "BANK-2026-031" in ledger_table and usd("100.00") in ledger_table


# --- the CSV ------------------------------------------------------------------------------------------------


def test_the_csv_has_a_row_per_day_and_lease_metered_and_not_yet_metered_alike(world, alice, bob):
    lease = world["lease"]
    world["clock"].move_to(START + timedelta(hours=5))
    other = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)  # 2.00 an hour from 15:00
    world["clock"].move_to(START + timedelta(hours=16, minutes=30))  # 02:30 on the 12th
    metering.meter(until=START + timedelta(hours=15))  # records up to 01:00 on the 12th; the rest is live
    response = _signed_in(alice).get("/balance/spending.csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="spending-2026-03.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == [
        ["date", "lease", "plan", "amount", "currency", "volume"],
        ["2026-03-11", str(lease.pk), "card_hour", "56.00", "USD", ""],  # 14 h x 4.00
        ["2026-03-11", str(other.pk), "card_hour", "18.00", "USD", ""],  # 9 h x 2.00
        ["2026-03-12", str(lease.pk), "card_hour", "10.00", "USD", ""],  # 2.5 h x 4.00
        ["2026-03-12", str(other.pk), "card_hour", "5.00", "USD", ""],
    ]
    # The same money as the page's month to date (no tax here).
    body = _get(_signed_in(alice), "/balance/")
    assert _figure(body, "month-to-date").endswith(usd("89.00"))


def test_the_csv_of_another_tenant_holds_none_of_alices_leases(world, charlie):
    world["clock"].move_to(START + timedelta(hours=3))
    rows = list(csv.reader(io.StringIO(_signed_in(charlie).get("/balance/spending.csv").content.decode())))
    assert rows == [["date", "lease", "plan", "amount", "currency", "volume"]]


# --- who may see and do what --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/balance/", "/balance/spending.csv"])
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_provider_only_organisation_has_no_balance_page_and_no_balance_link(world, bob):
    client = _signed_in(bob)
    assert client.get("/balance/").status_code == 403
    assert client.get("/balance/spending.csv").status_code == 403
    assert 'href="/balance/"' not in _get(client, "/provider/earnings/")


def test_another_tenant_sees_its_own_money_not_alices(world, charlie):
    world["clock"].move_to(START + timedelta(hours=3))
    body = _get(_signed_in(charlie), "/balance/")
    assert "BANK-2026-031" not in body and usd("100.00") not in body and usd("12.00") not in body
    assert f"/leases/{world['lease'].pk}/" not in body


def test_a_member_reads_the_page_but_neither_tops_up_nor_sets_the_cap(world, alice):
    member = make_persona(alice.org, role=Role.MEMBER)
    client = _signed_in(member)
    body = _get(client, "/balance/")
    assert _figure(body, "balance").endswith(usd("100.00"))
    assert 'id="top-up-form"' not in body and 'id="spend-limit-form"' not in body
    assert "An owner, admin or billing member of your organisation can top up the balance." in body
    assert client.post("/balance/top-up/", {"top_up-amount": "50"}).status_code == 403
    assert client.post("/balance/spend-limit/", {"limit-monthly_cap": "10"}).status_code == 403
    assert not SpendLimit.objects.filter(organization=alice.org).exists()


def test_the_navigation_links_the_balance_for_customers(world, alice):
    body = _get(_signed_in(alice), "/balance/")
    assert '<a href="/balance/" aria-current="page">Balance</a>' in body
    assert '<a href="/balance/">Balance</a>' in _get(_signed_in(alice), "/leases/")


# --- the spend limit ----------------------------------------------------------------------------------------


def test_billing_sets_a_monthly_cap_and_its_alert_percentages(world, alice):
    client = _signed_in(make_persona(alice.org, role=Role.BILLING))
    response = client.post("/balance/spend-limit/", {"limit-monthly_cap": "500", "limit-alert_at": "50, 80%"})
    assert response.status_code == 302 and response["Location"] == "/balance/"
    limit = SpendLimit.objects.get(organization=alice.org)
    assert limit.monthly_cap == Decimal("500.00") and limit.alert_at == ["0.5", "0.8"]
    body = _get(client, "/balance/")
    assert "Your spend limit is saved." in body
    assert f"Capped at {usd('500.00')} a month; e-mails at 50, 80 % of it." in _visible(body)
    assert 'value="50, 80"' in body


def test_an_empty_cap_removes_it_and_keeps_the_default_alerts(world, alice):
    client = _signed_in(alice)
    client.post("/balance/spend-limit/", {"limit-monthly_cap": "500", "limit-alert_at": "75"})
    response = client.post("/balance/spend-limit/", {"limit-monthly_cap": "", "limit-alert_at": ""})
    assert response.status_code == 302
    limit = SpendLimit.objects.get(organization=alice.org)
    assert limit.monthly_cap is None and limit.alert_at == ["0.5", "0.9"]
    assert "No monthly cap." in _get(client, "/balance/")


@pytest.mark.parametrize(
    ("cap", "alerts", "field", "message"),
    [
        ("-5", "", "monthly_cap", "Ensure this value is greater than or equal to 0."),
        ("１２", "", "monthly_cap", "Use ASCII digits (0-9)."),
        ("12.345", "", "monthly_cap", "Ensure that there are no more than 2 decimal places."),
        ("100", "0, 150", "alert_at", "One to five percentages, each above 0 and at most 100 (e.g. 50, 90)."),
        ("100", "10 20 30 40 50 60", "alert_at", "One to five percentages, each above 0 and at most 100"),
        ("100", "fifty", "alert_at", "One to five percentages"),
    ],
)
def test_a_bad_spend_limit_is_answered_with_the_forms_error(world, alice, cap, alerts, field, message):
    response = _signed_in(alice).post("/balance/spend-limit/", {"limit-monthly_cap": cap, "limit-alert_at": alerts})
    assert response.status_code == 400
    body = response.content.decode()
    error = re.search(rf'<small id="id_limit-{field}_errors" class="field-error">(.*?)</small>', body, re.S)
    assert error and message in error.group(1)
    assert 'aria-invalid="true"' in body
    assert not SpendLimit.objects.filter(organization=alice.org).exists()


# --- topping up ---------------------------------------------------------------------------------------------


def test_without_stripe_the_page_says_payments_are_not_configured_instead_of_the_form(world, alice):
    body = _get(_signed_in(alice), "/balance/")
    assert 'id="top-up-form"' not in body
    assert "Online payment is not configured on this site. Please contact us to pay." in body


def test_a_top_up_posted_while_stripe_has_no_secret_key_says_so_and_starts_nothing(world, alice, settings):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    response = _signed_in(alice).post("/balance/top-up/", {"top_up-amount": "50"})
    assert response.status_code == 503
    assert "Online payment is not configured on this site." in response.content.decode()
    assert not TopUp.objects.exists()


def test_a_top_up_makes_a_payment_intent_and_shows_stripes_payment_element(world, alice, fake_stripe):
    client = _signed_in(alice)
    body = _get(client, "/balance/")
    assert 'id="top-up-form"' in body and 'name="csrfmiddlewaretoken"' in body
    response = client.post("/balance/top-up/", {"top_up-amount": "50.00"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    top_up = TopUp.objects.get(organization=alice.org)
    assert top_up.amount == Decimal("50.00") and top_up.state == "pending" and top_up.created_by == alice.user
    secret = re.search(r'data-client-secret="([^"]+)"', page).group(1)
    assert secret.startswith(top_up.stripe_payment_intent)
    assert 'data-publishable-key="pk_test_suanli"' in page
    assert 'data-return-url="http://testserver/balance/"' in page
    assert '<script defer src="https://js.stripe.com/v3/"></script>' in page
    assert re.search(r'<script defer src="[^"]*js/balance_top_up\.js"></script>', page)
    assert f"Top up {usd('50.00')}" in page
    assert_page_keeps_to_the_policy(response)
    # The balance rises only when Stripe's webhook says the payment succeeded.
    assert _figure(_get(client, "/balance/"), "balance").endswith(usd("100.00"))


def test_a_top_up_form_posted_twice_starts_one_payment_and_another_amount_another(world, alice, fake_stripe):
    client = _signed_in(alice)
    attempt = re.search(r'name="top_up-attempt" value="([0-9a-f]{32})"', _get(client, "/balance/")).group(1)
    pages = [
        client.post("/balance/top-up/", {"top_up-amount": amount, "top_up-attempt": attempt}).content.decode()
        for amount in ("50.00", "50.00", "60.00")
    ]
    secrets = [re.search(r'data-client-secret="([^"]+)"', page).group(1) for page in pages]
    assert secrets[0] == secrets[1] != secrets[2]
    assert sorted(TopUp.objects.filter(organization=alice.org).values_list("amount", flat=True)) == [
        Decimal("50.00"),
        Decimal("60.00"),
    ]


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("", "This field is required."),
        ("lots", "Use ASCII digits (0-9)."),
        ("0", "A top-up is from 1 to 1000000."),
        ("1000000.01", "A top-up is from 1 to 1000000."),
        ("5.555", "Ensure that there are no more than 2 decimal places."),
    ],
)
def test_a_bad_top_up_amount_is_answered_with_the_forms_error(world, alice, settings, amount, message):
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_suanli"
    response = _signed_in(alice).post("/balance/top-up/", {"top_up-amount": amount})
    assert response.status_code == 400
    error = re.search(
        r'<small id="id_top_up-amount_errors" class="field-error">(.*?)</small>', response.content.decode()
    )
    assert error and message in error.group(1)
    assert not TopUp.objects.exists()


def test_back_from_stripe_the_page_thanks_the_customer(world, alice):
    body = _get(_signed_in(alice), "/balance/?redirect_status=succeeded&payment_intent=pi_1")
    assert "Thank you: your payment went through. Your balance rises as soon as Stripe confirms it to us." in body


def test_the_forms_get_and_post_only_as_they_should(world, alice):
    client = _signed_in(alice)
    assert client.get("/balance/top-up/").status_code == 405
    assert client.get("/balance/spend-limit/").status_code == 405
    assert client.post("/balance/").status_code == 405
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice.user)
    assert csrf_client.post("/balance/spend-limit/", {"limit-monthly_cap": "5"}).status_code == 403


# --- the banner ---------------------------------------------------------------------------------------------


def _notice(org, kind: str, at: datetime, **fields) -> FundsNotice:
    return FundsNotice.objects.create(
        organization=org, kind=kind, available=Decimal("3.00"), currency="USD", created_at=at, **fields
    )


def test_an_open_low_notice_shows_a_banner_on_every_page_of_the_organisation(world, alice, charlie):
    runs_out = START + timedelta(minutes=45)
    _notice(alice.org, "low", START, runs_out_at=runs_out)
    for path in ("/balance/", "/leases/", "/invoices/", "/", f"/leases/{world['lease'].pk}/"):
        banner = re.search(
            r'<p class="banner" role="alert" id="funds-banner">(.*?)</p>', _get(_signed_in(alice), path), re.S
        )
        assert banner, path
        text = _visible(banner.group(1)).strip()
        assert text.startswith(f"Your balance runs out at {formats.date_format(runs_out, 'DATETIME_FORMAT')} UTC")
        assert 'href="/balance/#top-up"' in banner.group(1)
    assert 'id="funds-banner"' not in _get(_signed_in(charlie), "/leases/")


def test_a_resolved_low_notice_shows_no_banner(world, alice):
    _notice(
        alice.org, "low", START, runs_out_at=START + timedelta(minutes=45), resolved_at=START + timedelta(minutes=5)
    )
    assert 'id="funds-banner"' not in _get(_signed_in(alice), "/leases/")


def test_stopped_leases_are_announced_for_seven_days(world, alice):
    _notice(alice.org, "stopped", START, leases_ended=1)
    world["clock"].move_to(START + timedelta(days=6, hours=23))
    body = _get(_signed_in(alice), "/leases/")
    banner = re.search(r'id="funds-banner">(.*?)</p>', body, re.S).group(1)
    assert "Your card-hour leases were stopped: funds exhausted." in banner and 'href="/balance/"' in banner
    world["clock"].move_to(START + timedelta(days=7, minutes=1))
    assert 'id="funds-banner"' not in _get(_signed_in(alice), "/leases/")


def test_a_stop_that_ended_no_lease_says_the_volumes_are_kept_instead(world, alice):
    _notice(alice.org, "stopped", START, leases_ended=0)
    banner = re.search(r'id="funds-banner">(.*?)</p>', _get(_signed_in(alice), "/leases/"), re.S).group(1)
    assert "card-hour leases were stopped" not in banner
    assert "Your balance has run out: your volumes are kept for a grace period, then wiped." in banner


def test_the_banner_costs_one_query_and_none_for_anonymous_visitors(world, alice, django_assert_num_queries):
    request = RequestFactory().get("/")
    request.user = alice.user
    request.org = alice.org
    with django_assert_num_queries(1):
        assert funds_banner(request) == {"funds_notice": None}
    request.org = None
    with django_assert_num_queries(0):
        assert funds_banner(request) == {}


def test_the_funds_job_raises_the_banner_then_stops_the_lease_and_the_lease_page_says_why(world, alice, settings):
    settings.SUANLI_FUNDS_NOTICE_SECONDS = 3600
    clock = world["clock"]
    lease = world["lease"]
    clock.move_to(START + timedelta(hours=24, minutes=30))  # 2.00 left: half an hour
    assert funds_check()["notified"] == 1
    client = _signed_in(alice)
    assert "Your balance runs out at" in _get(client, "/balance/")
    clock.move_to(START + timedelta(hours=25, minutes=30))
    assert funds_check()["stopped"] == 1
    body = _get(client, f"/leases/{lease.pk}/")
    assert "Your card-hour leases were stopped: funds exhausted." in body
    reason = re.search(r'<p class="banner" role="status" id="lease-end-reason">(.*?)</p>', body, re.S).group(1)
    assert _visible(reason).strip() == "Ended: funds exhausted Top up to rent again"
    assert Lease.objects.get(pk=lease.pk).end_reason == "funds_exhausted"


def test_a_lease_the_customer_ended_says_so(world, alice):
    services.lease_end(lease=world["lease"])
    body = _get(_signed_in(alice), f"/leases/{world['lease'].pk}/")
    assert "Ended: you ended it" in body and "funds exhausted" not in body


def test_a_running_lease_has_no_end_reason(world, alice):
    assert 'id="lease-end-reason"' not in _get(_signed_in(alice), f"/leases/{world['lease'].pk}/")


# --- Chinese ------------------------------------------------------------------------------------------------


def test_the_page_speaks_chinese(world, alice):
    _notice(alice.org, "stopped", START, leases_ended=1)
    body = _get(_signed_in(alice), "/balance/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    for text in (
        "余额与消费",
        "可用余额",
        "预付费",
        "下载本月 CSV",
        "账本",
        "银行转账",
        "您的按卡时计费租约已停止：余额耗尽。",
    ):
        assert text in body, text


# --- the provider's live earnings ---------------------------------------------------------------------------


def _this_month(body: str) -> str:
    return _visible(re.search(r'<div class="figures" id="this-month-USD">(.*?)</div>', body, re.S).group(1))


def test_the_providers_earnings_are_live_before_the_meter_runs(world, bob, settings):
    settings.SUANLI_TAKE_RATE = Decimal("0.15")
    world["clock"].move_to(START + timedelta(hours=3))
    figures = _this_month(_get(_signed_in(bob), "/provider/earnings/"))
    # 2 cards x 3 h x 2.00 = 12.00 gross, 1.80 commission, 10.20 net, 6 card-hours: no meter has run.
    assert figures.split() == [
        "Gross",
        "12.00",
        "USD",
        "Commission",
        "(15%)",
        "1.80",
        "USD",
        "Net",
        "before",
        "SLA",
        "credits",
        "10.20",
        "USD",
        "Card-hours",
        "delivered",
        "6.00",
    ]


def test_the_providers_earnings_add_the_live_part_to_the_metered_part_once(world, bob):
    world["clock"].move_to(START + timedelta(hours=3, minutes=30))
    metering.meter(until=START + timedelta(hours=2))
    figures = _this_month(_get(_signed_in(bob), "/provider/earnings/"))
    assert "14.00 USD" in figures and "7.00" in figures  # 3.5 h x 4.00, 7 card-hours: metered 2 h + live 1.5 h
