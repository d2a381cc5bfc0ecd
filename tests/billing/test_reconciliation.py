"""Reconciling a closed month: a clean one has no mismatch; tampering with usage, payments or payouts is listed
with the rows behind it; the command, the staff API (JSON and CSV) and the staff page."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from billing import invoicing, payments, payouts
from billing.models import Invoice, Payment, ProviderStatement, StripeEvent, UsageRecord
from billing.reconciliation import reconcile
from scheduler import services
from tests.billing import fake_connect
from tests.billing.conftest import SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.billing.fake_connect import FakeConnect
from tests.factories import PaymentFactory, PayoutFactory, ProviderTermsFactory, StripeEventFactory, online_server

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
PRICES = {"card_hour_price": Decimal("2.5000")}


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def month(clock, alice, bob, settings) -> dict:
    """March, closed: alice rents 2 of bob's cards for 5 hours (25.00 USD + 6 % tax); invoice open, statement open."""
    settings.SUANLI_TAX_RATE = Decimal("0.06")
    settings.STRIPE_SECRET_KEY = ""  # Stripe's API is not asked unless a test says so
    online_server(organization=bob.org, offer=PRICES, gpus=2, name="r-1")
    clock.move_to(MARCH + timedelta(days=9, hours=10))
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    clock.move_to(MARCH + timedelta(days=9, hours=15))
    services.lease_end(lease=lease)
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    clock.move_to(APRIL + timedelta(hours=2))
    return {"lease": lease, "invoice": Invoice.objects.get(), "statement": ProviderStatement.objects.get()}


def paid_by_webhook(invoice: Invoice) -> Payment:
    """The invoice paid by a Stripe payment whose payment_intent.succeeded event we stored."""
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    payment = PaymentFactory(
        invoice=invoice,
        organization_id=invoice.organization_id,
        stripe_payment_intent=intent,
        amount=invoice.total,
        currency=invoice.currency,
        state="succeeded",
    )
    cents = int(invoice.total * 100)
    obj = {"id": intent, "object": "payment_intent", "amount": cents, "amount_received": cents, "currency": "usd"}
    StripeEventFactory(
        event_id=f"evt_{uuid.uuid4().hex[:24]}",
        type="payment_intent.succeeded",
        created=datetime.now(tz=UTC),
        payload={"id": "evt", "type": "payment_intent.succeeded", "data": {"object": obj}},
    )
    Invoice.objects.filter(pk=invoice.pk).update(state="paid", paid_at=datetime.now(tz=UTC))
    return payment


@pytest.fixture
def settled(month, staff) -> dict:
    """March paid in full: alice's invoice by Stripe, bob's statement by bank."""
    month["payment"] = paid_by_webhook(month["invoice"])
    month["payout"] = payouts.payout_record_bank(statement=month["statement"], reference="CMB-0331", by=staff.user)
    return month


def kinds(result) -> list[str]:
    return [m.kind for m in result.mismatches]


def only(result, kind: str):
    [found] = [m for m in result.mismatches if m.kind == kind]
    return found


# --- a clean month ---------------------------------------------------------------------------------------


def test_a_clean_month_reconciles_with_no_mismatch(settled, staff):
    result = reconcile("2026-03")

    assert result.mismatches == []
    usd = result.totals["USD"]
    assert usd["metered"] == usd["invoiced_subtotal"] == Decimal("25.00")
    assert usd["invoiced"] + usd["sla_credits"] == usd["metered"]
    assert (usd["tax"], usd["invoiced_total"]) == (Decimal("1.50"), Decimal("26.50"))
    assert usd["paid"] + usd["open"] + usd["void"] == usd["invoiced_total"] == usd["paid"]
    assert usd["payments_received"] == Decimal("26.50")
    assert (usd["provider_gross"], usd["commission"], usd["provider_net"]) == (
        Decimal("25.00"),
        Decimal("3.75"),
        Decimal("21.25"),
    )
    assert usd["paid_out"] == Decimal("21.25")
    assert result.counts == {
        "usage_records": 10,
        "storage_records": 0,
        "data_access_records": 0,
        "invoices": 1,
        "statements": 1,
        "balance_entries": 0,
    }
    assert result.stripe["payments_by_webhook_event"] == 1
    out = io.StringIO()
    call_command("reconcile", "2026-03", stdout=out)
    assert "no mismatch" in out.getvalue() and "26.50" in out.getvalue()
    body = staff.api.get(reverse("admin-reconciliation"), {"period": "2026-03"}).json()
    assert body["ok"] is True and body["mismatches"] == []
    assert body["totals"]["USD"]["invoiced_total"] == "26.50" and body["totals"]["USD"]["paid_out"] == "21.25"


def test_an_open_invoice_and_an_open_statement_are_not_mismatches(month):
    result = reconcile("2026-03")

    assert result.ok
    assert result.totals["USD"]["open"] == Decimal("26.50") and result.totals["USD"]["paid_out"] == 0


# --- tampering -------------------------------------------------------------------------------------------


def test_a_usage_record_added_after_close_is_listed_with_its_line_invoice_and_statement(month):
    record = UsageRecord.objects.filter(lease=month["lease"]).order_by("id").first()
    shift = timedelta(days=10)
    record.pk = None
    record.slot_start, record.start, record.end = record.slot_start + shift, record.start + shift, record.end + shift
    record.save()  # written straight into the closed month

    result = reconcile("2026-03")

    invoice, statement = month["invoice"], month["statement"]
    line = invoice.lines.get()
    assert sorted(kinds(result)) == ["line_amount", "statement_gross", "usage_after_close"]
    late = only(result, "usage_after_close")
    assert late.objects == {"invoices": [invoice.number], "usage_records": [record.pk]}
    wrong_line = only(result, "line_amount")
    assert wrong_line.objects["invoice_lines"] == [line.pk] and wrong_line.objects["invoices"] == [invoice.number]
    assert "25.00" in wrong_line.message and "27.50" in wrong_line.message
    assert only(result, "statement_gross").objects == {
        "statements": [statement.pk],
        "organizations": [statement.organization_id],
    }
    assert result.totals["USD"]["metered"] == Decimal("27.50")


def test_usage_of_an_organisation_with_no_invoice_is_listed(month, charlie):
    record = UsageRecord.objects.filter(lease=month["lease"]).order_by("id").first()
    record.pk, record.organization = None, charlie.org
    record.slot_start += timedelta(days=3)
    record.start += timedelta(days=3)
    record.end += timedelta(days=3)
    record.save()

    result = reconcile("2026-03")

    missing = only(result, "usage_not_invoiced")
    assert missing.objects["usage_records"] == [record.pk]
    assert missing.objects["organizations"] == [charlie.org.pk]


def test_a_paid_invoice_without_a_payment_is_listed(month):
    invoice = month["invoice"]
    Invoice.objects.filter(pk=invoice.pk).update(state="paid", paid_at=APRIL)

    result = reconcile("2026-03")

    assert kinds(result) == ["paid_without_payment"]
    assert only(result, "paid_without_payment").objects == {"invoices": [invoice.number]}
    assert "26.50" in result.mismatches[0].message


def test_a_payment_no_stripe_record_confirms_is_listed(settled):
    StripeEvent.objects.all().delete()

    result = reconcile("2026-03")

    unconfirmed = only(result, "payment_unconfirmed")
    assert unconfirmed.objects["payments"] == [settled["payment"].pk]
    assert unconfirmed.objects["stripe_payment_intents"] == [settled["payment"].stripe_payment_intent]


def test_a_statement_paid_with_a_wrong_payout_amount_is_listed(month, staff):
    statement = month["statement"]
    payout = PayoutFactory(
        statement=statement,
        organization_id=statement.organization_id,
        method="bank",
        amount=statement.net - Decimal("1.00"),
        currency="USD",
        state="paid",
        reference="typo",
    )
    ProviderStatement.objects.filter(pk=statement.pk).update(state="paid")

    result = reconcile("2026-03")

    assert kinds(result) == ["payout_amount"]
    wrong = only(result, "payout_amount")
    assert wrong.objects == {
        "statements": [statement.pk],
        "organizations": [statement.organization_id],
        "payouts": [payout.pk],
    }
    assert "21.25" in wrong.message and "20.25" in wrong.message


def test_a_paid_statement_without_a_payout_is_listed(month):
    ProviderStatement.objects.filter(pk=month["statement"].pk).update(state="paid")

    assert kinds(reconcile("2026-03")) == ["payout_missing"]


# --- command, API and CSV --------------------------------------------------------------------------------


def test_the_reconcile_command_exits_non_zero_and_writes_the_csv(month, tmp_path):
    Invoice.objects.filter(pk=month["invoice"].pk).update(state="paid", paid_at=APRIL)
    path = tmp_path / "march.csv"
    out = io.StringIO()

    with pytest.raises(CommandError, match="1 mismatches") as failed:
        call_command("reconcile", "2026-03", "--csv", str(path), stdout=out)

    assert failed.value.returncode == 1
    assert "paid_without_payment" in out.getvalue() and month["invoice"].number in out.getvalue()
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["period"], r["kind"], r["currency"]) for r in rows] == [("2026-03", "paid_without_payment", "USD")]
    assert rows[0]["objects"] == f"invoices={month['invoice'].number}"
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("reconcile", "2026-3")


def test_the_api_lists_mismatches_and_exports_them_as_csv(month, staff):
    Invoice.objects.filter(pk=month["invoice"].pk).update(state="paid", paid_at=APRIL)
    url = reverse("admin-reconciliation")

    body = staff.api.get(url, {"period": "2026-03"}).json()
    as_csv = staff.api.get(url, {"period": "2026-03", "format": "csv"})
    accepted = staff.api.get(url, {"period": "2026-03"}, HTTP_ACCEPT="text/csv")

    assert body["ok"] is False and body["period"] == "2026-03"
    assert body["mismatches"] == [
        {
            "kind": "paid_without_payment",
            "message": body["mismatches"][0]["message"],
            "currency": "USD",
            "objects": {"invoices": [month["invoice"].number]},
        }
    ]
    for response in (as_csv, accepted):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        assert "reconciliation-2026-03.csv" in response["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(response.content.decode())))
        assert rows[0] == ["period", "kind", "currency", "message", "objects"]
        assert rows[1][:3] == ["2026-03", "paid_without_payment", "USD"]


def test_the_api_is_for_staff_only_and_refuses_a_bad_or_unfinished_period(month, staff, alice, bob):
    url = reverse("admin-reconciliation")

    for persona in (alice, bob):
        response = persona.api.get(url, {"period": "2026-03"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    bad = staff.api.get(url, {"period": "2026-13", "format": "csv"})
    assert bad.status_code == 400 and bad["Content-Type"].startswith("application/json")
    assert "period" in bad.json()["error"]["fields"]
    assert staff.api.get(url).status_code == 400
    running = staff.api.get(url, {"period": "2026-04"})
    assert running.status_code == 409 and running.json()["error"]["code"] == "period_open"


# --- the staff page --------------------------------------------------------------------------------------


def test_the_staff_page_shows_totals_mismatches_and_a_csv_link(month, staff, alice):
    Invoice.objects.filter(pk=month["invoice"].pk).update(state="paid", paid_at=APRIL)
    browser = Client()
    browser.force_login(staff.user)

    page = browser.get("/staff/reconciliation/", {"period": "2026-03"})

    assert page.status_code == 200
    html = page.content.decode()
    assert "paid_without_payment" in html and month["invoice"].number in html
    assert "26.50" in html and "21.25" in html
    assert "?period=2026-03&amp;format=csv" in html
    download = browser.get("/staff/reconciliation/", {"period": "2026-03", "format": "csv"})
    assert download["Content-Type"].startswith("text/csv") and b"paid_without_payment" in download.content
    assert browser.get("/staff/reconciliation/", {"period": "March"}).status_code == 400
    assert browser.get("/staff/reconciliation/").status_code == 200  # last month, by default

    customer = Client()
    customer.force_login(alice.user)
    assert customer.get("/staff/reconciliation/", {"period": "2026-03"}).status_code == 403
    anonymous = Client().get("/staff/reconciliation/", {"period": "2026-03"})
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]


def test_the_staff_page_says_when_everything_reconciles(settled, staff):
    browser = Client()
    browser.force_login(staff.user)

    english = browser.get("/staff/reconciliation/", {"period": "2026-03"}).content.decode()

    assert "Everything reconciles." in english
    assert "Download the mismatches (CSV)" in english


# --- against Stripe (localstripe + the fake Connect in front of it) --------------------------------------


@pytest.fixture(scope="module")
def connect_server() -> Iterator[FakeConnect]:
    with fake_connect.running() as server:
        yield server


@pytest.fixture
def stripe_world(month, fake_stripe: FakeStripe, connect_server: FakeConnect, settings) -> dict:
    """Stripe's API at the fake Connect, which forwards all but transfers to localstripe."""
    connect_server.reset()
    connect_server.upstream = fake_stripe.url
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_API_BASE = connect_server.url
    return {**month, "stripe": fake_stripe, "connect": connect_server}


def pay_on_stripe(world: dict, alice) -> Payment:
    """Alice pays her invoice by card on localstripe; Stripe's succeeded event reaches the webhook."""
    start = payments.invoice_pay(invoice=world["invoice"], org=alice.org)
    card = stripe.StripeClient(SECRET_KEY, base_addresses={"api": world["stripe"].url})
    method = card.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}}
    )
    intent_id = start.payment.stripe_payment_intent
    card.v1.payment_intents.update(intent_id, params={"payment_method": method.id})
    card.v1.payment_intents.confirm(intent_id)
    intent = world["stripe"].get(f"/v1/payment_intents/{intent_id}")
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {"object": intent},
    }
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    payments.stripe_event_receive(payload=payload.encode(), signature_header=header)
    return Payment.objects.get(pk=start.payment.pk)


def test_payments_and_transfers_are_matched_against_stripe(stripe_world, alice, bob, staff, settings):
    payment = pay_on_stripe(stripe_world, alice)
    assert payment.state == "succeeded"
    ProviderTermsFactory(organization=bob.org, stripe_account="acct_1BobIdc")
    payout = payouts.payout_send(statement=stripe_world["statement"], by=staff.user)

    result = reconcile("2026-03")

    assert result.mismatches == []
    assert result.stripe == {
        "payments_by_balance_transaction": 1,
        "payments_by_webhook_event": 0,
        "transfers_checked": 1,
        "transfers_unchecked": 0,
        "top_ups_by_balance_transaction": 0,
        "top_ups_by_webhook_event": 0,
    }

    # The stored events are not needed while Stripe's API answers; without both, nothing confirms the payment.
    StripeEvent.objects.all().delete()
    assert reconcile("2026-03").ok
    stripe_world["connect"].transfers[payout.reference]["amount"] -= 100
    assert kinds(reconcile("2026-03")) == ["transfer_mismatch"]
    assert only(reconcile("2026-03"), "transfer_mismatch").objects["transfers"] == [payout.reference]
    settings.STRIPE_SECRET_KEY = ""
    assert kinds(reconcile("2026-03")) == ["payment_unconfirmed"]


def test_a_payment_whose_amount_stripe_does_not_know_is_listed(stripe_world, alice):
    payment = pay_on_stripe(stripe_world, alice)
    Payment.objects.filter(pk=payment.pk).update(amount=Decimal("30.00"))  # more than Stripe took

    result = reconcile("2026-03")

    wrong = only(result, "payment_stripe_amount")
    assert wrong.objects["payments"] == [payment.pk]
    assert "balance transaction" in wrong.message and "2650" in wrong.message


def test_a_payment_stripe_has_never_heard_of_is_listed_even_with_a_stored_event(stripe_world, alice):
    invoice = stripe_world["invoice"]
    payment = paid_by_webhook(invoice)  # an event in our inbox, but no such intent on Stripe

    result = reconcile("2026-03")

    unknown = only(result, "payment_stripe_amount")
    assert unknown.objects["payments"] == [payment.pk]
    assert f"Stripe has no PaymentIntent {payment.stripe_payment_intent}" in unknown.message
