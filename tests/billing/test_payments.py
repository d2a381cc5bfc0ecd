"""Paying invoices with Stripe and Stripe's webhooks, against localstripe over real HTTP (tests/billing/conftest.py).

The customer's side (a card entered in Stripe.js) is played by the real `stripe` SDK against localstripe; the
webhook events carry localstripe's own objects and are signed with Stripe's scheme.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import stripe
from django.db import transaction
from django.test import Client
from django.urls import reverse

from accounts.models import Role
from billing import payments
from billing.models import Invoice, Payment, StripeCustomer, StripeEvent
from tests.billing.conftest import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from tests.conftest import Persona, make_persona
from tests.factories import InvoiceFactory

pytestmark = pytest.mark.usefixtures("fake_stripe")

GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # attaches, then the charge is declined


# --- helpers ---------------------------------------------------------------------------------------------


def open_invoice(org, *, total: str = "1234.56", currency: str = "USD", state: str = "open", **fields) -> Invoice:
    n = Invoice.objects.count() + 1
    return InvoiceFactory(
        organization=org,
        period=fields.pop("period", f"2025-{n % 12 + 1:02d}"),
        number="" if state == "draft" else f"INV-{uuid.uuid4().int % 10**6:06d}",
        state=state,
        currency=currency,
        subtotal=Decimal(total),
        credits=Decimal(0),
        tax=Decimal(0),
        total=Decimal(total),
        **fields,
    )


def pay(persona: Persona, invoice: Invoice, **headers):
    return persona.api.post(reverse("invoice-pay", args=[invoice.pk]), **headers)


def customer_side(fake: FakeStripe) -> stripe.StripeClient:
    return stripe.StripeClient(SECRET_KEY, base_addresses={"api": fake.url})


def confirm(fake: FakeStripe, intent_id: str, card: str = GOOD_CARD) -> dict[str, Any]:
    """Pay the intent with a card as Stripe.js would; the intent as Stripe then has it."""
    client = customer_side(fake)
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": card, "exp_month": 12, "exp_year": 2040, "cvc": "123"}}
    )
    client.v1.payment_intents.update(intent_id, params={"payment_method": method.id})
    try:
        client.v1.payment_intents.confirm(intent_id)
    except stripe.CardError:
        pass
    return fake.get(f"/v1/payment_intents/{intent_id}")


def charge_of(fake: FakeStripe, intent: dict[str, Any]) -> dict[str, Any]:
    latest = intent["latest_charge"]
    return fake.get(f"/v1/charges/{latest if isinstance(latest, str) else latest['id']}")


def event(type_: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": type_,
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }


def deliver(evt: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None):
    payload = json.dumps(evt)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return Client().post(
        "/webhooks/stripe/", data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )


def started(alice: Persona, invoice: Invoice) -> tuple[Payment, str]:
    response = pay(alice, invoice)
    assert response.status_code == 200, response.content
    payment = Payment.objects.get(pk=response.json()["payment"])
    return payment, payment.stripe_payment_intent


# --- paying ----------------------------------------------------------------------------------------------


def test_paying_an_open_invoice_makes_one_payment_intent_and_a_retry_returns_the_same(alice, fake_stripe):
    invoice = open_invoice(alice.org, total="1234.56")

    first = pay(alice, invoice)
    again = pay(alice, invoice)

    assert first.status_code == 200, first.content
    body = first.json()
    assert again.json() == body
    payment = Payment.objects.get(invoice=invoice)
    assert body == {
        "payment": payment.pk,
        "client_secret": body["client_secret"],
        "publishable_key": PUBLISHABLE_KEY,
        "amount": "1234.56",
        "currency": "USD",
    }
    assert body["client_secret"].startswith(payment.stripe_payment_intent)
    assert (payment.state, payment.amount, payment.organization) == ("pending", Decimal("1234.56"), alice.org)
    intents = [
        pi for pi in fake_stripe.get("/v1/payment_intents")["data"] if pi["metadata"]["invoice_id"] == str(invoice.pk)
    ]
    assert [pi["id"] for pi in intents] == [payment.stripe_payment_intent]
    assert intents[0]["amount"] == 123456
    assert intents[0]["currency"] == "usd"
    assert intents[0]["customer"] == StripeCustomer.objects.get(organization=alice.org).customer_id
    assert intents[0]["metadata"]["invoice_number"] == invoice.number
    assert len(fake_stripe.posts("/v1/customers")) == 1


def test_a_cny_invoice_is_charged_in_fen_by_card_alipay_or_wechat_pay_under_an_idempotency_key(alice, fake_stripe):
    invoice = open_invoice(alice.org, total="88.80", currency="CNY")

    payment, intent_id = started(alice, invoice)

    [sent] = fake_stripe.posts("/v1/payment_intents")
    assert sent.params["amount"] == "8880"
    assert sent.params["currency"] == "cny"
    methods = [sent.params[f"payment_method_types[{i}]"] for i in range(3)]
    assert methods == ["card", "alipay", "wechat_pay"]
    assert sent.params["payment_method_options[wechat_pay][client]"] == "web"
    assert sent.idempotency_key == f"suanli-invoice-{invoice.pk}-attempt-1"
    assert (payment.amount, payment.currency) == (Decimal("88.80"), "CNY")


def test_a_retry_after_a_crash_before_our_commit_gets_the_same_intent_from_stripe(alice, fake_stripe):
    invoice = open_invoice(alice.org)

    class Crash(Exception):
        pass

    with pytest.raises(Crash), transaction.atomic():
        lost = payments.invoice_pay(invoice=invoice, org=alice.org)
        raise Crash  # the process died after Stripe answered, before our commit
    assert not Payment.objects.filter(invoice=invoice).exists()

    kept = payments.invoice_pay(invoice=invoice, org=alice.org)

    assert kept.payment.stripe_payment_intent == lost.payment.stripe_payment_intent
    assert kept.client_secret == lost.client_secret
    assert len(fake_stripe.get("/v1/payment_intents")["data"]) == 1
    assert len(fake_stripe.get("/v1/customers")["data"]) == 1


def test_the_same_idempotency_key_replays_the_first_answer(alice, fake_stripe):
    invoice = open_invoice(alice.org)

    first = pay(alice, invoice, HTTP_IDEMPOTENCY_KEY="pay-1")
    second = pay(alice, invoice, HTTP_IDEMPOTENCY_KEY="pay-1")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert Payment.objects.filter(invoice=invoice).count() == 1
    assert len(fake_stripe.posts("/v1/payment_intents")) == 1


def test_a_draft_invoice_is_not_found_like_everywhere_else(alice, fake_stripe):
    """A draft is not the customer's yet: the pay endpoint answers it like the invoice pages and API do (404)."""
    invoice = open_invoice(alice.org, state="draft")

    response = pay(alice, invoice)

    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "Unknown invoice.", "fields": {}}
    assert not Payment.objects.exists()
    assert fake_stripe.sent == []


@pytest.mark.parametrize(("state", "message"), [("void", "Only an open invoice"), ("paid", "already paid")])
def test_only_an_open_invoice_can_be_paid(alice, fake_stripe, state, message):
    invoice = open_invoice(alice.org, state=state)

    response = pay(alice, invoice)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert message in response.json()["error"]["message"]
    assert not Payment.objects.exists()
    assert fake_stripe.sent == []


def test_another_tenants_invoice_is_not_found(alice, charlie, fake_stripe):
    invoice = open_invoice(alice.org)

    response = pay(charlie, invoice)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert invoice.number not in response.content.decode()
    assert not Payment.objects.exists()
    assert fake_stripe.sent == []


def test_a_member_without_a_billing_role_may_not_pay_but_the_billing_role_may(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    member = make_persona(alice.org, role=Role.MEMBER)
    accountant = make_persona(alice.org, role=Role.BILLING)

    refused = pay(member, invoice)
    allowed = pay(accountant, invoice)

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert allowed.status_code == 200


def test_without_a_stripe_key_paying_says_payments_are_not_configured(alice, settings):
    settings.STRIPE_SECRET_KEY = ""
    invoice = open_invoice(alice.org)

    response = pay(alice, invoice, HTTP_IDEMPOTENCY_KEY="k")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "payments_not_configured"


def test_stripe_out_of_reach_is_a_502_that_a_retry_with_the_same_key_can_get_past(alice, fake_stripe, settings):
    invoice = open_invoice(alice.org)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens on the discard port

    down = pay(alice, invoice, HTTP_IDEMPOTENCY_KEY="k")
    settings.STRIPE_API_BASE = fake_stripe.url
    up = pay(alice, invoice, HTTP_IDEMPOTENCY_KEY="k")

    assert down.status_code == 502
    assert down.json()["error"]["code"] == "payment_provider_error"
    assert up.status_code == 200


# --- webhooks --------------------------------------------------------------------------------------------


def test_a_succeeded_webhook_marks_the_payment_succeeded_and_the_invoice_paid(alice, fake_stripe):
    invoice = open_invoice(alice.org, total="99.00")
    payment, intent_id = started(alice, invoice)
    intent = confirm(fake_stripe, intent_id)
    assert intent["status"] == "succeeded"
    evt = event("payment_intent.succeeded", intent)

    response = deliver(evt)

    assert response.status_code == 200, response.content
    assert response.json() == {"received": evt["id"], "duplicate": False}
    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert payment.state == "succeeded"
    assert invoice.state == "paid"
    assert invoice.paid_at == datetime.fromtimestamp(evt["created"], tz=UTC)
    stored = StripeEvent.objects.get(event_id=evt["id"])
    assert stored.type == "payment_intent.succeeded"
    assert stored.processed_at is not None
    assert pay(alice, invoice).status_code == 409


def test_an_event_delivered_twice_has_one_effect(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    evt = event("payment_intent.succeeded", confirm(fake_stripe, intent_id))
    deliver(evt)
    invoice.refresh_from_db()
    first_stored = StripeEvent.objects.get(event_id=evt["id"])

    again = deliver(evt)

    assert again.status_code == 200
    assert again.json() == {"received": evt["id"], "duplicate": True}
    assert StripeEvent.objects.count() == 1
    assert StripeEvent.objects.get().processed_at == first_stored.processed_at
    assert Invoice.objects.get(pk=invoice.pk).paid_at == invoice.paid_at


def test_a_failed_payment_leaves_the_invoice_open_and_the_same_intent_takes_another_card(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    declined = confirm(fake_stripe, intent_id, card=DECLINED_CARD)

    deliver(event("payment_intent.payment_failed", declined))

    payment.refresh_from_db()
    assert (payment.state, payment.failure_message) == ("failed", "Your card was declined.")
    assert Invoice.objects.get(pk=invoice.pk).state == "open"
    retry = pay(alice, invoice)
    assert retry.json()["payment"] == payment.pk
    assert retry.json()["client_secret"].startswith(intent_id)

    deliver(event("payment_intent.succeeded", confirm(fake_stripe, intent_id)))

    payment.refresh_from_db()
    assert (payment.state, payment.failure_message) == ("succeeded", "")
    assert Invoice.objects.get(pk=invoice.pk).state == "paid"


def test_after_a_canceled_intent_paying_again_makes_a_new_one(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    canceled = customer_side(fake_stripe).v1.payment_intents.cancel(intent_id)

    deliver(event("payment_intent.canceled", fake_stripe.get(f"/v1/payment_intents/{canceled.id}")))
    again = pay(alice, invoice)

    assert Payment.objects.get(pk=payment.pk).state == "canceled"
    assert again.status_code == 200
    second = Payment.objects.get(pk=again.json()["payment"])
    assert second.pk != payment.pk
    assert second.stripe_payment_intent != intent_id
    assert fake_stripe.posts("/v1/payment_intents")[-1].idempotency_key == f"suanli-invoice-{invoice.pk}-attempt-2"


def test_an_intent_canceled_on_stripe_before_its_event_arrives_is_replaced_when_paying(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    customer_side(fake_stripe).v1.payment_intents.cancel(intent_id)

    again = pay(alice, invoice)

    assert Payment.objects.get(pk=payment.pk).state == "canceled"
    assert Payment.objects.get(pk=again.json()["payment"]).stripe_payment_intent != intent_id


def test_a_failure_created_before_the_success_but_delivered_after_it_leaves_the_invoice_paid(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    now = int(time.time())
    failed = event(
        "payment_intent.payment_failed", confirm(fake_stripe, intent_id, card=DECLINED_CARD), created=now - 5
    )
    succeeded = event("payment_intent.succeeded", confirm(fake_stripe, intent_id), created=now)

    assert deliver(succeeded).status_code == 200
    assert deliver(failed).status_code == 200

    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert payment.state == "succeeded"
    assert invoice.state == "paid"
    assert invoice.paid_at == datetime.fromtimestamp(now, tz=UTC)
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == 2


def test_a_bad_signature_is_refused_and_nothing_is_stored(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    payment, intent_id = started(alice, invoice)
    evt = event("payment_intent.succeeded", confirm(fake_stripe, intent_id))

    response = deliver(evt, secret="whsec_someone_else")
    unsigned = Client().post("/webhooks/stripe/", data=json.dumps(evt), content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"
    assert unsigned.status_code == 400
    assert not StripeEvent.objects.exists()
    assert Payment.objects.get(pk=payment.pk).state == "pending"
    assert Invoice.objects.get(pk=invoice.pk).state == "open"


def test_a_stale_timestamp_is_refused(alice, fake_stripe):
    invoice = open_invoice(alice.org)
    _, intent_id = started(alice, invoice)
    evt = event("payment_intent.succeeded", confirm(fake_stripe, intent_id))

    response = deliver(evt, timestamp=int(time.time()) - 301)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "signature_invalid"
    assert not StripeEvent.objects.exists()
    assert Invoice.objects.get(pk=invoice.pk).state == "open"


def test_refunds_are_recorded_and_a_full_refund_leaves_the_invoice_paid(alice, fake_stripe):
    invoice = open_invoice(alice.org, total="100.00")
    payment, intent_id = started(alice, invoice)
    intent = confirm(fake_stripe, intent_id)
    deliver(event("payment_intent.succeeded", intent))
    stripe_side = customer_side(fake_stripe)

    stripe_side.v1.refunds.create(params={"payment_intent": intent_id, "amount": 2550})
    deliver(event("charge.refunded", charge_of(fake_stripe, intent)))

    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.state, payment.refunded) == ("succeeded", Decimal("25.50"))
    assert (invoice.state, invoice.refunded) == ("paid", Decimal("25.50"))

    # The rest, named: localstripe would refund the whole charge again where Stripe refunds what is left.
    stripe_side.v1.refunds.create(params={"payment_intent": intent_id, "amount": 7450})
    full = event("charge.refunded", charge_of(fake_stripe, intent))
    deliver(full)

    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.state, payment.refunded) == ("refunded", Decimal("100.00"))
    assert (invoice.state, invoice.refunded) == ("paid", invoice.total)


def test_a_refund_that_overtakes_the_success_still_marks_the_invoice_paid(alice, fake_stripe):
    invoice = open_invoice(alice.org, total="10.00")
    payment, intent_id = started(alice, invoice)
    intent = confirm(fake_stripe, intent_id)
    customer_side(fake_stripe).v1.refunds.create(params={"payment_intent": intent_id})
    now = int(time.time())
    refunded = event("charge.refunded", charge_of(fake_stripe, intent), created=now)
    succeeded = event("payment_intent.succeeded", intent, created=now - 60)

    deliver(refunded)
    deliver(succeeded)

    payment.refresh_from_db()
    invoice.refresh_from_db()
    assert (payment.state, payment.refunded) == ("refunded", Decimal("10.00"))
    assert (invoice.state, invoice.refunded) == ("paid", Decimal("10.00"))


def test_paying_the_last_overdue_invoice_lifts_the_billing_hold(alice, fake_stripe):
    alice.org.billing_hold = True
    alice.org.save(update_fields=["billing_hold"])
    march = open_invoice(alice.org, period="2025-03", overdue=True)
    april = open_invoice(alice.org, period="2025-04", overdue=True)

    for invoice, hold_after in ((march, True), (april, False)):
        _, intent_id = started(alice, invoice)
        deliver(event("payment_intent.succeeded", confirm(fake_stripe, intent_id)))

        invoice.refresh_from_db()
        alice.org.refresh_from_db()
        assert (invoice.state, invoice.overdue) == ("paid", False)
        assert alice.org.billing_hold is hold_after


def test_events_of_other_types_are_stored_and_ignored(alice, fake_stripe):
    evt = event("customer.created", {"id": "cus_x", "object": "customer"})

    response = deliver(evt)

    assert response.status_code == 200
    stored = StripeEvent.objects.get(event_id=evt["id"])
    assert stored.payload == evt
    assert stored.processed_at is not None


def test_an_intent_that_is_not_ours_is_stored_and_changes_nothing(alice, fake_stripe):
    stranger = {"id": "pi_notours", "object": "payment_intent", "amount": 500, "currency": "usd", "metadata": {}}

    response = deliver(event("payment_intent.succeeded", stranger))

    assert response.status_code == 200
    assert not Payment.objects.exists()


def test_the_webhook_answers_only_post_with_json(fake_stripe):
    response = Client().get("/webhooks/stripe/")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_its_own_signed_webhook_and_the_invoice_gets_paid(alice, fake_stripe, live_server):
    from localstripe import webhooks

    invoice = open_invoice(alice.org)
    _, intent_id = started(alice, invoice)
    webhooks.register_webhook("suanli", f"{live_server.url}/webhooks/stripe/", WEBHOOK_SECRET, None)
    try:
        confirm(fake_stripe, intent_id)
        deadline = time.monotonic() + 15
        while Invoice.objects.get(pk=invoice.pk).state != "paid" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        webhooks._webhooks.pop("suanli", None)

    assert Invoice.objects.get(pk=invoice.pk).state == "paid"
    # (localstripe may also deliver events that earlier tests' confirmations left in flight: not ours, ignored)
    assert StripeEvent.objects.filter(type="payment_intent.succeeded", payload__data__object__id=intent_id).count() == 1


def test_credit_notes_lower_what_is_charged_and_a_full_credit_settles_the_invoice(alice, fake_stripe):
    from billing import invoicing

    invoice = open_invoice(alice.org, total="100.00")
    first, _ = started(alice, invoice)
    invoicing.credit_note_issue(invoice=invoice, amount=Decimal("30"), reason="outage goodwill")
    again = pay(alice, invoice).json()
    assert again["amount"] == "70.00" and again["payment"] != first.pk
    first.refresh_from_db()
    assert first.state == "canceled"
    assert fake_stripe.get(f"/v1/payment_intents/{first.stripe_payment_intent}")["status"] == "canceled"
    intent = fake_stripe.get(f"/v1/payment_intents/{Payment.objects.get(pk=again['payment']).stripe_payment_intent}")
    assert intent["amount"] == 7000
    invoicing.credit_note_issue(invoice=invoice, amount=Decimal("70"), reason="the rest")
    invoice.refresh_from_db()
    assert invoice.state == "paid" and invoice.amount_due() == 0
    assert pay(alice, invoice).status_code == 409
