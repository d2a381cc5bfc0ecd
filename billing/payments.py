"""Paying invoices with Stripe, and applying Stripe's webhook events to payments and invoices (services).

A payment only moves forward through the order below, whatever order Stripe's events arrive in; a late or
repeated event that would move it back changes nothing (a `payment_failed` created before a `succeeded` but
delivered after it leaves the payment succeeded and the invoice paid). Between two failures, the one Stripe
created last gives the failure message. Refunded amounts only grow (Stripe sends the charge's running total).

    pending < failed < canceled < succeeded < refunded

An open invoice becomes `paid` (paid_at = when Stripe created the event, overdue cleared) once one of its
payments has succeeded for the full total, and the organisation's billing hold is lifted when no overdue open
invoice is left. A refund never voids or reopens a paid invoice: `Invoice.refunded` is the sum refunded on its
payments, so a full refund leaves the invoice `paid` with `refunded == total` (the money trail stays whole for
reconciliation; a correction of what was owed is a credit note). Money for an invoice that is no longer open
(void, or paid twice) is recorded on its payment and logged for staff; the invoice is not touched.

Lock order, shared by every writer here: invoice, then payment, then organisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.access import parse_id
from accounts.errors import InvalidTransition, NotFound
from accounts.models import Organization
from accounts.tenancy import platform_work, scoped
from billing import stripe_gateway as gateway
from billing import topups
from billing.invoicing import billing_hold_release
from billing.models import Invoice, Payment, StripeEvent
from billing.stripe_gateway import payments_configured_check

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "a payment touches its invoice's organisation, and a verified Stripe event names its own payment"

logger = logging.getLogger(__name__)

_RANK = {
    Payment.State.PENDING: 0,
    Payment.State.FAILED: 1,
    Payment.State.CANCELED: 2,
    Payment.State.SUCCEEDED: 3,
    Payment.State.REFUNDED: 4,
}
# Payments the customer can still complete on Stripe's side (a failed intent takes another payment method).
_LIVE = (Payment.State.PENDING, Payment.State.FAILED)


@dataclass(frozen=True)
class PaymentStart:
    """What the pay page needs to confirm the PaymentIntent with Stripe.js."""

    payment: Payment
    client_secret: str
    publishable_key: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class EventReceipt:
    event: StripeEvent
    duplicate: bool


@platform_work(_PLATFORM)
def invoice_pay(*, invoice: Invoice, org: Organization) -> PaymentStart:
    """Start (or resume) paying an open invoice of `org` with a Stripe PaymentIntent.

    Idempotent: while the invoice has a pending or failed payment, the same PaymentIntent is returned (a failed one
    takes another payment method); a new one is made only for the first attempt or after a cancellation, under a
    Stripe idempotency key of the invoice and attempt. Locks the invoice row (and the organisation's, the first
    time, to create its Stripe Customer) for the length of the Stripe calls, so concurrent calls make one intent.
    Raises InvalidTransition (409) unless the invoice is open, NotFound for another tenant's invoice, and
    stripe_gateway.StripeUnavailable when Stripe cannot be reached.
    """
    payments_configured_check()
    with transaction.atomic():
        locked = scoped(Invoice, org).select_for_update().filter(pk=invoice.pk).first()
        if locked is None:
            raise NotFound("Unknown invoice.")
        if locked.state == Invoice.State.PAID:
            raise InvalidTransition("This invoice is already paid.")
        if locked.state != Invoice.State.OPEN:
            raise InvalidTransition(f"Only an open invoice can be paid; this one is {locked.state}.")
        due = locked.amount_due()
        if due <= 0:
            raise InvalidTransition("This invoice has nothing to pay.")
        payment = locked.payments.filter(state__in=_LIVE).order_by("-id").first()
        intent = None
        if payment is not None and payment.amount != due:
            # A credit note since this attempt: it asks for too much. Cancel it at Stripe (so it can no longer
            # take money) and make a new attempt for what is due.
            gateway.payment_intent_cancel(payment.stripe_payment_intent)
            _payment_update(payment, state=Payment.State.CANCELED)
            payment = None
        if payment is not None:
            intent = gateway.payment_intent_retrieve(payment.stripe_payment_intent)
            if intent.status == "canceled":
                _payment_update(payment, state=Payment.State.CANCELED)
                payment = intent = None
        if payment is None or intent is None:
            customer_id = gateway.customer_ensure(org=org)
            attempt = locked.payments.count() + 1
            intent = gateway.payment_intent_create(invoice=locked, customer_id=customer_id, attempt=attempt)
            payment, _ = Payment.objects.get_or_create(
                stripe_payment_intent=intent.id,
                defaults={
                    "invoice": locked,
                    "organization_id": locked.organization_id,
                    "amount": intent.amount,
                    "currency": intent.currency,
                },
            )
    return PaymentStart(
        payment=payment,
        client_secret=intent.client_secret,
        publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
        amount=payment.amount,
        currency=payment.currency,
    )


@platform_work(_PLATFORM)
def stripe_event_receive(*, payload: bytes, signature_header: str | None) -> EventReceipt:
    """Verify a Stripe webhook, store its event once and apply it, in one transaction.

    Raises stripe_gateway.SignatureInvalid (nothing stored) for a bad signature, a stale timestamp or a body that
    is not an event. Idempotent: a second delivery of the same event id stores and changes nothing (a concurrent
    one waits on the unique event id, then finds it). Events of other types are stored and otherwise ignored.
    If applying fails, nothing is stored and the error reaches Stripe, which delivers the event again later.
    """
    event = gateway.event_verify(payload, signature_header)
    created = datetime.fromtimestamp(int(event["created"]), tz=UTC)
    with transaction.atomic():
        try:
            with transaction.atomic():
                stored = StripeEvent.objects.create(
                    event_id=event["id"], type=event["type"], created=created, payload=event
                )
        except IntegrityError:
            return EventReceipt(event=StripeEvent.objects.get(event_id=event["id"]), duplicate=True)
        obj = (event.get("data") or {}).get("object") or {}
        handler = topups.handler_for(event["type"], obj) or _HANDLERS.get(event["type"])
        if handler is not None:
            handler(obj, created, stored)
        stored.processed_at = timezone.now()
        stored.save(update_fields=["processed_at"])
    return EventReceipt(event=stored, duplicate=False)


# --- applying events ------------------------------------------------------------------------------------


def _payment_update(payment: Payment, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(payment, name, value)
    payment.save(update_fields=[*fields, "updated_at"])


def _payment_of_intent(obj: dict[str, Any]) -> Payment | None:
    """Our payment for a PaymentIntent; made from the intent's metadata if Stripe's event overtook our commit."""
    intent_id = obj.get("id")
    if not intent_id:
        return None
    payment = Payment.objects.filter(stripe_payment_intent=intent_id).first()
    if payment is not None:
        return payment
    invoice_id = str((obj.get("metadata") or {}).get("invoice_id", ""))
    try:
        invoice = Invoice.objects.filter(pk=parse_id(invoice_id, "invoice")).first()
    except NotFound:
        invoice = None
    currency = str(obj.get("currency", "")).upper()
    if invoice is None or currency != invoice.currency or "amount" not in obj:
        logger.info("stripe: payment intent %s is not for one of our invoices; ignored", intent_id)
        return None
    payment, _ = Payment.objects.get_or_create(
        stripe_payment_intent=intent_id,
        defaults={
            "invoice": invoice,
            "organization_id": invoice.organization_id,
            "amount": gateway.from_minor_units(obj["amount"], currency),
            "currency": currency,
        },
    )
    return payment


def _lock(payment: Payment) -> tuple[Invoice, Payment]:
    invoice = Invoice.objects.select_for_update().get(pk=payment.invoice_id)
    return invoice, Payment.objects.select_for_update().get(pk=payment.pk)


def _advance(payment: Payment, state: str, **fields: Any) -> bool:
    """Move the payment to `state` only if that is forward in the order; return whether it moved."""
    if _RANK[state] <= _RANK[payment.state]:
        return False
    _payment_update(payment, state=state, **fields)
    return True


def _settle(invoice: Invoice, payment: Payment, when: datetime) -> None:
    """Mark the invoice paid if this payment took its full total; lift the billing hold it may have caused."""
    if payment.state not in (Payment.State.SUCCEEDED, Payment.State.REFUNDED):
        return
    if invoice.state != Invoice.State.OPEN:
        others = invoice.payments.filter(state__in=(Payment.State.SUCCEEDED, Payment.State.REFUNDED))
        if invoice.state != Invoice.State.PAID or others.exclude(pk=payment.pk).exists():
            logger.warning(
                "stripe: payment %s took money for invoice %s, already %s", payment.pk, invoice, invoice.state
            )
        return
    if payment.amount < invoice.amount_due() or payment.currency != invoice.currency:
        logger.warning(
            "stripe: payment %s (%s %s) does not cover invoice %s",
            payment.pk,
            payment.amount,
            payment.currency,
            invoice,
        )
        return
    invoice.state = Invoice.State.PAID
    invoice.paid_at = when
    invoice.overdue = False
    invoice.save(update_fields=["state", "paid_at", "overdue"])
    billing_hold_release(org_id=invoice.organization_id)


def _on_intent_succeeded(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    found = _payment_of_intent(obj)
    if found is None:
        return
    invoice, payment = _lock(found)
    received = obj.get("amount_received", obj.get("amount"))
    if received is not None and int(received) < gateway.to_minor_units(payment.amount, payment.currency):
        logger.warning("stripe: payment %s succeeded for only %s minor units", payment.pk, received)
        return
    _advance(payment, Payment.State.SUCCEEDED, failure_message="")
    _settle(invoice, payment, created)


def _on_intent_failed(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    found = _payment_of_intent(obj)
    if found is None:
        return
    _, payment = _lock(found)
    error = obj.get("last_payment_error") or {}
    message = str(error.get("message") or "The payment failed.")[:300]
    if _advance(payment, Payment.State.FAILED, failure_message=message):
        return
    if payment.state == Payment.State.FAILED and not _newer_intent_event(payment.stripe_payment_intent, created, event):
        _payment_update(payment, failure_message=message)


def _newer_intent_event(intent_id: str, created: datetime, event: StripeEvent) -> bool:
    return (
        StripeEvent.objects.filter(
            type__startswith="payment_intent.", created__gt=created, payload__data__object__id=intent_id
        )
        .exclude(pk=event.pk)
        .exists()
    )


def _on_intent_canceled(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    found = _payment_of_intent(obj)
    if found is None:
        return
    _, payment = _lock(found)
    _advance(payment, Payment.State.CANCELED)


def _on_charge_refunded(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    found = Payment.objects.filter(stripe_payment_intent=obj.get("payment_intent") or "").first()
    if found is None:
        logger.info("stripe: refund of charge %s is not for one of our payments; ignored", obj.get("id"))
        return
    invoice, payment = _lock(found)
    if str(obj.get("currency", "")).upper() != payment.currency:
        logger.warning("stripe: refund of charge %s is not in the currency of payment %s", obj.get("id"), payment.pk)
        return
    refunded = max(payment.refunded, gateway.from_minor_units(int(obj.get("amount_refunded") or 0), payment.currency))
    if refunded != payment.refunded:
        _payment_update(payment, refunded=refunded)
    # A refunded charge had succeeded, even if that event has not reached us yet.
    _advance(payment, Payment.State.REFUNDED if refunded >= payment.amount else Payment.State.SUCCEEDED)
    _settle(invoice, payment, created)
    total = invoice.payments.aggregate(total=Sum("refunded"))["total"] or Decimal(0)
    if total != invoice.refunded:
        invoice.refunded = total
        invoice.save(update_fields=["refunded"])


_HANDLERS: dict[str, Callable[[dict[str, Any], datetime, StripeEvent], None]] = {
    "payment_intent.succeeded": _on_intent_succeeded,
    "payment_intent.payment_failed": _on_intent_failed,
    "payment_intent.canceled": _on_intent_canceled,
    "charge.refunded": _on_charge_refunded,
}
