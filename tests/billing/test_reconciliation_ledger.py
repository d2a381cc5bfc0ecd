"""Reconciling the balance ledger: a month of top-ups (with a refund and a dispute), a bank transfer, an invoice
settled from the balance and a credit note returned to it reconciles; every kind of bad entry, written straight
into the ledger (it is immutable, so wrong rows are inserted, never updated), is listed with its organisation and
entry; the command and the staff page show the ledger's section; Stripe's API confirms top-ups when configured."""

from __future__ import annotations

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

from billing import invoicing, ledger, payments, topups
from billing.models import BalanceEntry, Invoice, TopUp
from billing.reconciliation import reconcile
from scheduler import services
from tests.billing.conftest import SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.factories import InvoiceFactory, online_server

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
MAY = datetime(2026, 4, 30, 16, 0, tzinfo=UTC)
IN_MARCH = MARCH + timedelta(days=20)
IN_APRIL = APRIL + timedelta(days=5)


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


def deliver(event_type: str, obj: dict) -> None:
    """A signed Stripe event through the webhook, as Stripe sends it."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, WEBHOOK_SECRET)
    payments.stripe_event_receive(payload=payload.encode(), signature_header=header)


def top_up_paid(org, amount: str) -> TopUp:
    """A top-up whose payment_intent.succeeded event came (the event stays in the inbox, as in production)."""
    intent = f"pi_{uuid.uuid4().hex[:24]}"
    top_up = TopUp.objects.create(
        organization=org, amount=Decimal(amount), currency="USD", stripe_payment_intent=intent
    )
    cents = int(Decimal(amount) * 100)
    obj = {
        "id": intent,
        "object": "payment_intent",
        "amount": cents,
        "amount_received": cents,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"kind": "top_up", "organization_id": str(org.pk)},
    }
    deliver("payment_intent.succeeded", obj)
    top_up.refresh_from_db()
    return top_up


def charge_event(top_up: TopUp, **fields) -> dict:
    return {"object": "charge", "payment_intent": top_up.stripe_payment_intent, "currency": "usd", **fields}


@pytest.fixture
def books(clock, alice, bob, staff, settings) -> dict:
    """Alice, prepaid, tops up 100.00 USD in March (10.00 refunded, 5.00 disputed) and sends 50.00 by bank; her
    March lease (25.00 + 6 % tax) is settled from the balance at the close; in April a 1.50 credit note on it goes
    back to the balance. Her ledger: 100 - 10 - 5 + 50 - 26.50 + 1.50 = 110.00. The clock stops in May."""
    settings.SUANLI_TAX_RATE = Decimal("0.06")
    settings.STRIPE_SECRET_KEY = ""  # Stripe's API is not asked unless a test says so: the stored events confirm
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency="USD", by=staff.user)
    online_server(organization=bob.org, offer={"card_hour_price": Decimal("2.5000")}, gpus=2, name="l-1")
    clock.move_to(MARCH + timedelta(days=2))
    top_up = top_up_paid(alice.org, "100.00")
    deliver("charge.refunded", charge_event(top_up, id="ch_refund", amount_refunded=1000))
    deliver("charge.dispute.created", charge_event(top_up, id="dp_1", object="dispute", amount=500, status="open"))
    bank, _ = ledger.adjustment_record(
        org=alice.org, amount="50.00", currency="USD", reference="CMB-20260303", by=staff.user
    )
    clock.move_to(MARCH + timedelta(days=9, hours=10))
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    clock.move_to(MARCH + timedelta(days=9, hours=15))
    services.lease_end(lease=lease)
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    clock.move_to(IN_APRIL)
    note = invoicing.credit_note_issue(invoice=invoice, amount=Decimal("1.50"), reason="an hour down", by=staff.user)
    clock.move_to(MAY + timedelta(hours=2))
    top_up.refresh_from_db()
    return {"top_up": top_up, "bank": bank, "invoice": invoice, "note": note, "alice": alice}


def insert(org, kind: str, amount: str, *, when: datetime = IN_MARCH, **fields) -> BalanceEntry:
    """A row written straight into the ledger, as a bug or a hand at the database would."""
    return BalanceEntry.objects.create(
        organization=org,
        kind=kind,
        amount=Decimal(amount),
        currency="USD",
        key=f"forged:{uuid.uuid4().hex}",
        created_at=when,
        **fields,
    )


def kinds(result) -> list[str]:
    return sorted(m.kind for m in result.mismatches)


def only(result, kind: str):
    [found] = [m for m in result.mismatches if m.kind == kind]
    return found


# --- the clean books ---------------------------------------------------------------------------------------


def test_a_month_of_top_ups_transfers_and_a_settled_invoice_reconciles(books, alice):
    march, april = reconcile("2026-03"), reconcile("2026-04")

    assert march.mismatches == [] and april.mismatches == []
    usd = march.totals["USD"]
    assert (usd["ledger_top_ups"], usd["ledger_refunds"], usd["ledger_disputes"]) == (
        Decimal("100.00"),
        Decimal("-10.00"),
        Decimal("-5.00"),
    )
    assert usd["ledger_bank_transfers"] == Decimal("50.00") and usd["ledger_net"] == Decimal("135.00")
    assert usd["settled_from_balance"] == Decimal("26.50")  # March's invoice, paid from the balance
    assert march.counts["balance_entries"] == 4 and march.stripe["top_ups_by_webhook_event"] == 1
    april_usd = april.totals["USD"]
    assert (april_usd["ledger_settlements"], april_usd["ledger_credit_notes"]) == (Decimal("-26.50"), Decimal("1.50"))
    assert april_usd["ledger_net"] == Decimal("-25.00")
    assert books["invoice"].state == "paid"
    assert sum(BalanceEntry.objects.filter(organization=alice.org).values_list("amount", flat=True)) == Decimal(
        "110.00"
    )


# --- each kind of bad entry --------------------------------------------------------------------------------


def test_a_top_up_entry_without_its_top_up_is_listed_and_breaks_the_organisations_sum(books, alice):
    forged = insert(alice.org, "top_up", "20.00")

    result = reconcile("2026-03")

    assert kinds(result) == ["entry_without_cause", "ledger_balance"]
    orphan = only(result, "entry_without_cause")
    assert orphan.objects == {"organizations": [alice.org.pk], "balance_entries": [forged.pk]}
    assert "does not name its top-up" in orphan.message
    balance = only(result, "ledger_balance")
    assert balance.objects["organizations"] == [alice.org.pk] and forged.pk in balance.objects["balance_entries"]
    assert "top-ups: 120.00 in the ledger, 100.00 by their causes" in balance.message


def test_a_top_up_credited_twice_and_for_another_amount_than_stripe_took_is_listed(books, alice):
    top_up = books["top_up"]
    twice = insert(alice.org, "top_up", "90.00", top_up=top_up)

    result = reconcile("2026-03")

    assert kinds(result) == ["ledger_balance", "top_up_entry_mismatch", "top_up_entry_mismatch", "top_up_stripe_amount"]
    wrong = [
        m for m in result.mismatches if m.kind == "top_up_entry_mismatch" and m.objects["balance_entries"] == [twice.pk]
    ]
    assert "the top-up is 100.00 USD" in wrong[0].message and "credited 2 times" in wrong[0].message
    stripe_says = only(result, "top_up_stripe_amount")
    assert stripe_says.objects["balance_entries"] == [twice.pk] and "10000 minor units" in stripe_says.message
    assert stripe_says.objects["organizations"] == [alice.org.pk]


def test_a_credit_for_a_failed_top_up_that_stripe_never_confirmed_is_listed(books, alice):
    failed = TopUp.objects.create(
        organization=alice.org,
        amount=Decimal("30.00"),
        currency="USD",
        stripe_payment_intent="pi_failed",
        state="failed",
    )
    forged = insert(alice.org, "top_up", "30.00", top_up=failed)

    result = reconcile("2026-03")

    assert kinds(result) == ["ledger_balance", "top_up_entry_mismatch", "top_up_unconfirmed"]
    assert "the top-up is failed" in only(result, "top_up_entry_mismatch").message
    assert only(result, "top_up_unconfirmed").objects["balance_entries"] == [forged.pk]


def test_another_organisations_credit_for_a_top_up_is_listed_under_both(books, alice, charlie):
    forged = insert(charlie.org, "top_up", "100.00", top_up=books["top_up"])

    result = reconcile("2026-03")

    mismatch = [m for m in result.mismatches if m.kind == "top_up_entry_mismatch"]
    assert {tuple(m.objects["organizations"]) for m in mismatch} == {(alice.org.pk,), (charlie.org.pk,)}
    assert any(f"organisation {alice.org.pk}'s" in m.message for m in mismatch)
    balance = only(result, "ledger_balance")
    assert balance.objects == {"organizations": [charlie.org.pk], "balance_entries": [forged.pk]}


def test_a_succeeded_top_up_that_was_never_credited_is_listed(books, alice):
    lost = TopUp.objects.create(
        organization=alice.org,
        amount=Decimal("40.00"),
        currency="USD",
        stripe_payment_intent="pi_lost",
        state="succeeded",
    )
    TopUp.objects.filter(pk=lost.pk).update(created_at=IN_MARCH)

    result = reconcile("2026-03")

    assert kinds(result) == ["ledger_balance", "top_up_not_credited"]
    assert only(result, "top_up_not_credited").objects["top_ups"] == [lost.pk]
    assert "top-ups: 100.00 in the ledger, 140.00 by their causes" in only(result, "ledger_balance").message


def test_refund_entries_that_do_not_sum_to_the_refunded_amount_are_listed(books, alice):
    extra = insert(alice.org, "refund", "-3.00", top_up=books["top_up"])

    result = reconcile("2026-03")

    assert kinds(result) == ["ledger_balance", "refund_entries"]
    refund = only(result, "refund_entries")
    assert "10.00 USD refunded, but its refund entries come to 13.00" in refund.message
    assert extra.pk in refund.objects["balance_entries"] and refund.objects["organizations"] == [alice.org.pk]


def test_a_dispute_won_that_stripe_never_closed_is_listed(books, alice):
    insert(alice.org, "dispute_won", "5.00", top_up=books["top_up"], reference="dp_1")

    result = reconcile("2026-03")

    assert kinds(result) == ["dispute_entries", "ledger_balance"]
    assert "5.00 USD disputed, but its dispute entries come to 0.00" in only(result, "dispute_entries").message


def test_a_settlement_of_an_open_invoice_for_the_wrong_amount_is_listed(books, alice):
    other = InvoiceFactory(
        organization=alice.org,
        number="INV-X-1",
        period="2026-02",
        state="open",
        subtotal=Decimal("40.00"),
        total=Decimal("40.00"),
    )
    forged = insert(alice.org, "settlement", "-10.00", when=IN_APRIL, invoice=other)

    result = reconcile("2026-04")

    assert kinds(result) == ["ledger_balance", "settlement_mismatch"]
    wrong = only(result, "settlement_mismatch")
    assert "the invoice is open" in wrong.message and "it asked 40.00 when settled" in wrong.message
    assert wrong.objects["balance_entries"] == [forged.pk] and wrong.objects["invoices"] == [str(other)]
    assert (
        "settlements less credit-note returns: -35.00 in the ledger, -65.00" in only(result, "ledger_balance").message
    )


def test_a_settlement_without_an_invoice_and_a_transfer_without_a_reference_are_listed(books, alice):
    no_invoice = insert(alice.org, "settlement", "-10.00", when=IN_APRIL)
    no_reference = insert(alice.org, "bank_transfer", "10.00", when=IN_APRIL, reason="a transfer, somewhere")

    result = reconcile("2026-04")

    orphans = [m for m in result.mismatches if m.kind == "entry_without_cause"]
    assert sorted(m.objects["balance_entries"][0] for m in orphans) == [no_invoice.pk, no_reference.pk]
    assert {m.message.split("does not name ")[1] for m in orphans} == {"the invoice it paid.", "the bank's reference."}
    assert kinds(result) == ["entry_without_cause", "entry_without_cause", "ledger_balance"]


def test_an_invoice_paid_from_the_balance_without_a_settlement_is_listed_not_as_unpaid(books, alice, charlie):
    prepaid = InvoiceFactory(
        organization=alice.org,
        number="INV-X-2",
        period="2026-02",
        state="paid",
        paid_at=IN_MARCH,
        subtotal=Decimal("12.00"),
        total=Decimal("12.00"),
    )
    postpaid = InvoiceFactory(
        organization=charlie.org,
        number="INV-X-3",
        period="2026-02",
        state="paid",
        paid_at=IN_MARCH,
        subtotal=Decimal("8.00"),
        total=Decimal("8.00"),
    )

    result = reconcile("2026-02")

    # (Both invoices have no lines behind their totals, which check (a) lists as invoice_sums.)
    assert [k for k in kinds(result) if k != "invoice_sums"] == ["paid_without_payment", "settlement_missing"]
    missing = only(result, "settlement_missing")
    assert missing.objects == {"organizations": [alice.org.pk], "invoices": [str(prepaid)]}
    assert only(result, "paid_without_payment").objects["invoices"] == [str(postpaid)]


def test_a_credit_note_entry_of_another_amount_is_listed(books, alice):
    note = books["note"]
    forged = insert(
        alice.org,
        "credit_note",
        "4.00",
        when=IN_APRIL,
        invoice=books["invoice"],
        credit_note=note,
        reference=note.number,
    )

    result = reconcile("2026-04")

    assert kinds(result) == ["credit_note_entry_mismatch", "ledger_balance", "settlement_mismatch"]
    assert "the credit note is 1.50 USD" in only(result, "credit_note_entry_mismatch").message
    assert only(result, "credit_note_entry_mismatch").objects["balance_entries"] == [forged.pk]
    # The settlement now seems to have taken more than its invoice asked: 26.50 against 25.00 + 5.50 returned.
    assert "it asked 30.50 when settled" in only(result, "settlement_mismatch").message


# --- the command and the staff page ------------------------------------------------------------------------


def test_the_command_prints_the_ledger_and_fails_on_its_mismatch(books, alice, tmp_path):
    out = io.StringIO()
    call_command("reconcile", "2026-03", stdout=out)
    assert "balance ledger" in out.getvalue() and "bank_transfers" in out.getvalue()
    assert "balance ledger: no mismatches" in out.getvalue()

    forged = insert(alice.org, "top_up", "20.00")
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reconcile", "2026-03", "--csv", str(tmp_path / "m.csv"), stdout=out)
    assert "balance ledger: 2 mismatches" in out.getvalue()
    assert f"balance_entries={forged.pk}" in out.getvalue()
    assert "entry_without_cause" in (tmp_path / "m.csv").read_text()


def test_the_staff_page_shows_the_ledger_section_with_its_mismatches(books, alice, staff):
    browser = Client()
    browser.force_login(staff.user)

    clean = browser.get("/staff/reconciliation/", {"period": "2026-03"}).content.decode()
    assert 'id="ledger-totals"' in clean and "Bank transfers" in clean and "135.00" in clean
    assert 'id="ledger-ok"' in clean and "Everything reconciles." in clean

    forged = insert(alice.org, "top_up", "20.00")
    html = browser.get("/staff/reconciliation/", {"period": "2026-03"}).content.decode()
    assert 'id="ledger-mismatches"' in html and "entry_without_cause" in html and "ledger_balance" in html
    assert f"balance_entries: {forged.pk}" in html
    assert 'id="mismatches"' not in html  # nothing outside the ledger is wrong
    chinese = browser.get("/staff/reconciliation/", {"period": "2026-03"}, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "余额账本" in chinese.content.decode() and "银行转账" in chinese.content.decode()


# --- against Stripe's API (localstripe) --------------------------------------------------------------------


def test_top_ups_are_confirmed_by_stripes_balance_transaction_when_configured(
    clock, alice, staff, fake_stripe: FakeStripe, settings
):
    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency="USD", by=staff.user)
    clock.move_to(MARCH + timedelta(days=3))
    start = topups.top_up_start(org=alice.org, amount="80.00", currency="USD", by=alice.user)
    card = stripe.StripeClient(SECRET_KEY, base_addresses={"api": fake_stripe.url})
    method = card.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}}
    )
    intent_id = start.top_up.stripe_payment_intent
    card.v1.payment_intents.update(intent_id, params={"payment_method": method.id})
    card.v1.payment_intents.confirm(intent_id)
    deliver("payment_intent.succeeded", fake_stripe.get(f"/v1/payment_intents/{intent_id}"))
    clock.move_to(APRIL + timedelta(hours=1))

    result = reconcile("2026-03")

    assert result.mismatches == [] and result.stripe["top_ups_by_balance_transaction"] == 1
    assert result.totals["USD"]["ledger_top_ups"] == Decimal("80.00")

    # A credit Stripe's API does not know: a PaymentIntent never made there, with only a stored event for it.
    clock.move_to(IN_MARCH)
    ghost = top_up_paid(alice.org, "20.00")
    clock.move_to(APRIL + timedelta(hours=2))
    found = reconcile("2026-03")
    unknown = only(found, "top_up_stripe_amount")
    assert f"Stripe has no {ghost.stripe_payment_intent}" in unknown.message
    assert unknown.objects["top_ups"] == [ghost.pk] and unknown.objects["organizations"] == [alice.org.pk]
