"""Top-ups through Stripe, against localstripe over real HTTP (tests/billing/conftest.py): the balance rises once per
payment however its webhooks come (twice, reordered, a failure after the success), falls by what is refunded or
disputed, rises again when a dispute is won, and an open prepaid invoice is settled once a top-up covers it.

localstripe confirms card payments only (its PaymentMethod knows card and sepa_debit), so the Alipay top-up's
intent is made on localstripe by `top_up_start` as any other, and its success is the event Stripe sends for an
Alipay payment (the intent succeeded, its charge's payment_method_details of type alipay), built here. Disputes
too: localstripe has none, so their events are built as Stripe sends them (a `dispute` object naming the charge's
payment intent).
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from accounts.errors import InvalidInput
from billing import topups
from billing.balances import standing
from billing.models import BalanceEntry, StripeEvent, TopUp
from tests.billing.conftest import FakeStripe
from tests.billing.test_balances import ledger_sum, prepaid
from tests.billing.test_payments import charge_of, confirm, customer_side, deliver, event, open_invoice
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.usefixtures("fake_stripe")

D = Decimal
DECLINED_CARD = "4000000000000341"


def started(org, amount: str = "100.00") -> tuple[TopUp, str]:
    start = topups.top_up_start(org=org, amount=D(amount), currency=org.currency)
    assert start.client_secret and start.amount == D(amount)
    return start.top_up, start.top_up.stripe_payment_intent


def paid(fake: FakeStripe, org, amount: str = "100.00") -> tuple[TopUp, dict[str, Any]]:
    """A top-up paid by card on Stripe (no webhook delivered yet)."""
    top_up, intent_id = started(org, amount)
    intent = confirm(fake, intent_id)
    assert intent["status"] == "succeeded"
    return top_up, intent


def dispute(intent: dict[str, Any], amount: int, status: str, dispute_id: str) -> dict[str, Any]:
    return {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": intent["currency"],
        "charge": intent["latest_charge"]
        if isinstance(intent["latest_charge"], str)
        else intent["latest_charge"]["id"],
        "payment_intent": intent["id"],
        "reason": "fraudulent",
        "status": status,
    }


def ok(response) -> None:
    assert response.status_code == 200, response.content


def test_a_card_top_up_raises_the_balance_once_however_often_its_webhook_comes(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent = paid(fake_stripe, alice.org)
    assert standing(alice.org).available == 0  # nothing before Stripe says it succeeded

    succeeded = event("payment_intent.succeeded", intent)
    ok(deliver(succeeded))
    ok(deliver(succeeded))  # the same event again
    ok(deliver(event("payment_intent.succeeded", intent)))  # another event of the same success

    top_up.refresh_from_db()
    assert top_up.state == "succeeded"
    [entry] = BalanceEntry.objects.filter(organization=alice.org)
    assert (entry.kind, entry.amount, entry.key, entry.top_up_id) == (
        "top_up",
        D("100.00"),
        f"top_up:{intent['id']}",
        top_up.pk,
    )
    assert standing(alice.org).available == D("100.00")


def test_a_failure_delivered_after_the_success_changes_nothing(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent = paid(fake_stripe, alice.org)
    now = int(time.time())
    ok(deliver(event("payment_intent.succeeded", intent, created=now)))
    failed = {**intent, "status": "requires_payment_method", "last_payment_error": {"message": "Declined"}}
    ok(deliver(event("payment_intent.payment_failed", failed, created=now - 30)))
    ok(deliver(event("payment_intent.canceled", {**intent, "status": "canceled"}, created=now + 30)))

    top_up.refresh_from_db()
    assert (top_up.state, top_up.failure_message) == ("succeeded", "")
    assert ledger_sum(alice.org) == D("100.00")


def test_a_declined_card_credits_nothing_and_another_card_then_credits_once(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent_id = started(alice.org, "30.00")
    declined = confirm(fake_stripe, intent_id, card=DECLINED_CARD)
    ok(deliver(event("payment_intent.payment_failed", {**declined, "last_payment_error": {"message": "declined"}})))
    top_up.refresh_from_db()
    assert top_up.state == "failed" and ledger_sum(alice.org) == 0

    intent = confirm(fake_stripe, intent_id)
    ok(deliver(event("payment_intent.succeeded", intent)))
    top_up.refresh_from_db()
    assert top_up.state == "succeeded" and ledger_sum(alice.org) == D("30.00")


def test_a_refund_that_overtakes_the_success_credits_then_takes_it_back(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent = paid(fake_stripe, alice.org)
    customer_side(fake_stripe).v1.refunds.create(params={"payment_intent": intent["id"]})
    now = int(time.time())

    ok(deliver(event("charge.refunded", charge_of(fake_stripe, intent), created=now)))
    ok(deliver(event("payment_intent.succeeded", intent, created=now - 60)))

    top_up.refresh_from_db()
    assert (top_up.state, top_up.refunded) == ("succeeded", D("100.00"))
    kinds = sorted(BalanceEntry.objects.filter(organization=alice.org).values_list("kind", "amount"))
    assert kinds == [("refund", D("-100.00")), ("top_up", D("100.00"))]
    assert standing(alice.org).available == 0


def test_a_partial_then_full_refund_lowers_the_balance_by_what_was_refunded(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent = paid(fake_stripe, alice.org)
    ok(deliver(event("payment_intent.succeeded", intent)))
    stripe_side = customer_side(fake_stripe)

    stripe_side.v1.refunds.create(params={"payment_intent": intent["id"], "amount": 2550})
    partial = event("charge.refunded", charge_of(fake_stripe, intent))
    ok(deliver(partial))
    assert standing(alice.org).available == D("74.50")

    stripe_side.v1.refunds.create(params={"payment_intent": intent["id"], "amount": 7450})
    ok(deliver(event("charge.refunded", charge_of(fake_stripe, intent))))
    assert standing(alice.org).available == 0
    # The partial refund's event again, under a new id (a late, smaller running total): nothing more.
    ok(deliver({**partial, "id": f"evt_{uuid.uuid4().hex[:24]}"}))
    top_up.refresh_from_db()
    assert top_up.refunded == D("100.00")
    assert ledger_sum(alice.org) == 0
    assert BalanceEntry.objects.filter(kind="refund").count() == 2


def test_a_dispute_lowers_the_balance_and_a_won_dispute_restores_it(alice, fake_stripe):
    prepaid(alice.org)
    top_up, intent = paid(fake_stripe, alice.org)
    ok(deliver(event("payment_intent.succeeded", intent)))

    opened = event("charge.dispute.created", dispute(intent, 4000, "needs_response", "dp_1"))
    ok(deliver(opened))
    ok(deliver({**opened, "id": f"evt_{uuid.uuid4().hex[:24]}"}))
    assert standing(alice.org).available == D("60.00")
    top_up.refresh_from_db()
    assert top_up.disputed == D("40.00")

    won = event("charge.dispute.closed", dispute(intent, 4000, "won", "dp_1"))
    ok(deliver(won))
    ok(deliver({**won, "id": f"evt_{uuid.uuid4().hex[:24]}"}))
    assert standing(alice.org).available == D("100.00")
    top_up.refresh_from_db()
    assert top_up.disputed == 0


def test_a_lost_dispute_keeps_the_amount_off(alice, fake_stripe):
    prepaid(alice.org)
    _, intent = paid(fake_stripe, alice.org)
    ok(deliver(event("payment_intent.succeeded", intent)))
    ok(deliver(event("charge.dispute.created", dispute(intent, 10000, "needs_response", "dp_2"))))
    ok(deliver(event("charge.dispute.closed", dispute(intent, 10000, "lost", "dp_2"))))
    assert standing(alice.org).available == 0


def test_a_won_dispute_delivered_before_its_opening_nets_to_nothing(alice, fake_stripe):
    prepaid(alice.org)
    _, intent = paid(fake_stripe, alice.org)
    now = int(time.time())
    ok(deliver(event("charge.dispute.closed", dispute(intent, 10000, "won", "dp_3"), created=now)))
    ok(deliver(event("charge.dispute.created", dispute(intent, 10000, "needs_response", "dp_3"), created=now - 99)))
    ok(deliver(event("payment_intent.succeeded", intent, created=now - 999)))
    assert ledger_sum(alice.org) == D("100.00")
    assert TopUp.objects.get(organization=alice.org).disputed == 0


def test_an_alipay_top_up_in_yuan_raises_the_balance_once(fake_stripe):
    org = OrganizationFactory(currency="CNY")
    prepaid(org)
    top_up, intent_id = started(org, "888.00")
    [sent] = fake_stripe.posts("/v1/payment_intents")
    assert (sent.params["amount"], sent.params["currency"]) == ("88800", "cny")
    assert "alipay" in [sent.params[f"payment_method_types[{i}]"] for i in range(3)]
    # As Stripe sends the success of an intent paid with Alipay (localstripe cannot confirm one).
    intent = fake_stripe.get(f"/v1/payment_intents/{intent_id}")
    charge = {"id": "ch_alipay_1", "object": "charge", "amount": 88800, "currency": "cny", "paid": True,
              "payment_intent": intent_id, "payment_method_details": {"type": "alipay", "alipay": {}}}  # fmt: skip
    succeeded = {**intent, "status": "succeeded", "amount_received": 88800, "latest_charge": charge,
                 "payment_method_types": ["card", "alipay", "wechat_pay"]}  # fmt: skip

    now = int(time.time())
    ok(deliver(event("payment_intent.succeeded", succeeded, created=now)))
    ok(deliver(event("payment_intent.succeeded", succeeded, created=now + 5)))
    ok(deliver(event("payment_intent.payment_failed", {**intent, "status": "requires_payment_method"}, created=now)))

    top_up.refresh_from_db()
    assert (top_up.state, top_up.currency) == ("succeeded", "CNY")
    money = standing(org)
    assert (money.currency, money.available) == ("CNY", D("888.00"))
    assert StripeEvent.objects.count() == 3


def test_a_success_for_less_than_the_top_up_credits_nothing(alice, fake_stripe):
    prepaid(alice.org)
    _, intent = paid(fake_stripe, alice.org)
    ok(deliver(event("payment_intent.succeeded", {**intent, "amount_received": 9999})))
    assert ledger_sum(alice.org) == 0


def test_an_open_prepaid_invoice_is_settled_when_a_top_up_covers_it(alice, fake_stripe):
    prepaid(alice.org)
    march = open_invoice(alice.org, total="60.00", period="2026-03")
    april = open_invoice(alice.org, total="70.00", period="2026-04")
    assert standing(alice.org).available == D("-130.00")

    _, intent = paid(fake_stripe, alice.org)
    ok(deliver(event("payment_intent.succeeded", intent)))

    march.refresh_from_db()
    april.refresh_from_db()
    assert (march.state, april.state) == ("paid", "open")  # oldest first, while the balance covers them
    settlement = BalanceEntry.objects.get(kind="settlement")
    assert (settlement.amount, settlement.invoice_id) == (D("-60.00"), march.pk)
    assert standing(alice.org).available == D("-30.00")

    _, second = paid(fake_stripe, alice.org, "30.00")
    ok(deliver(event("payment_intent.succeeded", second)))
    april.refresh_from_db()
    assert april.state == "paid"
    assert ledger_sum(alice.org) == 0 and standing(alice.org).available == 0


def test_top_up_bounds_and_currency_are_checked(alice, fake_stripe):
    for amount, currency in (("0.50", "USD"), ("1000000.01", "USD"), ("10.001", "USD"), ("10", "CNY")):
        with pytest.raises(InvalidInput):
            topups.top_up_start(org=alice.org, amount=amount, currency=currency, by=UserFactory())
    assert TopUp.objects.count() == 0 and fake_stripe.posts("/v1/payment_intents") == []
