"""Check (d): the month's money against Stripe. Each succeeded (or since refunded) payment of the month's invoices
is matched against Stripe: with the API, the PaymentIntent's charge must have succeeded with a balance transaction
of the payment's amount and currency (a charge settled in another currency is compared by the charge's own amount);
where the API cannot answer, against a stored `payment_intent.succeeded` webhook event for its intent
(`payment_unconfirmed`, `payment_stripe_amount`). Paid Connect payouts are fetched too (`transfer_mismatch`,
`transfer_unconfirmed`). Every call to Stripe goes through billing/stripe_gateway.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from billing import stripe_gateway as gateway
from billing.invoicing import Period
from billing.models import Payment, Payout, StripeEvent
from billing.reconciliation.report import RECEIVED, Reconciliation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settlement:
    """What Stripe says a payment took: minor units in a currency, from where."""

    amount: int
    currency: str
    source: str  # "balance_transaction" or "webhook_event"
    reference: str
    status: str = "succeeded"


def _from_api(intent_id: str) -> Settlement | None:
    """The PaymentIntent's charge and its balance transaction; None where Stripe cannot say."""
    try:
        intent = gateway.payment_intent_settlement(intent_id)
    except gateway.StripeRefused as exc:
        if exc.http_status == 404:
            return Settlement(0, "", "balance_transaction", intent_id, "missing")
        logger.warning("reconcile: payment intent %s could not be fetched: %s", intent_id, exc.reason)
        return None
    except gateway.StripeUnavailable as exc:
        logger.warning("reconcile: payment intent %s could not be fetched: %s", intent_id, exc)
        return None
    charge = intent.get("latest_charge")
    if not charge or isinstance(charge, str):
        return None
    txn = charge.get("balance_transaction")
    if not txn or isinstance(txn, str):
        return None
    status = str(intent.get("status")) if charge.get("status") == "succeeded" else f"charge {charge.get('status')}"
    if str(txn.get("currency", "")).lower() == str(charge.get("currency", "")).lower():
        amount, currency = int(txn["amount"]), str(txn["currency"])
    else:  # settled in another currency: the charge's own amount is what the customer paid
        amount, currency = int(charge["amount"]), str(charge["currency"])
    return Settlement(amount, currency.upper(), "balance_transaction", str(txn.get("id", "")), status)


def _from_events(intent_id: str) -> Settlement | None:
    event = (
        StripeEvent.objects.filter(type="payment_intent.succeeded", payload__data__object__id=intent_id)
        .order_by("-created", "-id")
        .first()
    )
    if event is None:
        return None
    obj = event.payload["data"]["object"]
    received = obj.get("amount_received", obj.get("amount"))
    if received is None:
        return None
    return Settlement(int(received), str(obj.get("currency", "")).upper(), "webhook_event", event.event_id)


def intent_settlement(intent_id: str, *, use_api: bool) -> Settlement | None:
    """What Stripe took for a PaymentIntent: its balance transaction (with the API), else its stored
    payment_intent.succeeded event; None when neither says (an invoice payment's or a top-up's alike)."""
    return (_from_api(intent_id) if use_api else None) or _from_events(intent_id)


def check_stripe_payments(result: Reconciliation, period: Period, *, use_api: bool) -> None:
    checked = {"balance_transaction": 0, "webhook_event": 0}
    for payment in Payment.objects.filter(invoice__period=period.label, state__in=RECEIVED).order_by("id"):
        intent = payment.stripe_payment_intent
        found = intent_settlement(intent, use_api=use_api)
        ids = {"payments": [payment.pk], "stripe_payment_intents": [intent], "invoices": [payment.invoice_id]}
        if found is None:
            result.add(
                "payment_unconfirmed",
                f"Payment {payment.pk} ({intent}, {payment.amount} {payment.currency}) is {payment.state} here, but "
                f"neither a Stripe balance transaction nor a payment_intent.succeeded event confirms it.",
                payment.currency,
                **ids,
            )
            continue
        checked[found.source] += 1
        expected = gateway.to_minor_units(payment.amount, payment.currency)
        if found.status == "missing":
            message = f"Payment {payment.pk} is {payment.state} here, but Stripe has no PaymentIntent {intent}."
            result.add("payment_stripe_amount", message, payment.currency, **ids)
        elif found.status != "succeeded" or found.amount != expected or found.currency != payment.currency:
            result.add(
                "payment_stripe_amount",
                f"Payment {payment.pk} ({intent}) is {payment.amount} {payment.currency} here; Stripe's "
                f"{found.source.replace('_', ' ')} {found.reference} says {found.amount} minor units of "
                f"{found.currency} ({found.status}).",
                payment.currency,
                **ids,
            )
    result.stripe.update({f"payments_by_{k}": v for k, v in checked.items()})


def check_stripe_transfers(result: Reconciliation, period: Period, *, use_api: bool) -> None:
    transfers = Payout.objects.filter(
        statement__period=period.label, method=Payout.Method.STRIPE_TRANSFER, state=Payout.State.PAID
    ).order_by("id")
    checked = 0
    for payout in transfers if use_api else ():
        ids = {"payouts": [payout.pk], "transfers": [payout.reference], "statements": [payout.statement_id]}
        try:
            transfer = gateway.transfer_retrieve(payout.reference)
        except gateway.StripeUnavailable as exc:
            reason = exc.reason if isinstance(exc, gateway.StripeRefused) else str(exc)
            result.add(
                "transfer_unconfirmed",
                f"Transfer {payout.reference} of payout {payout.pk} could not be fetched from Stripe: {reason}",
                payout.currency,
                **ids,
            )
            continue
        checked += 1
        expected = gateway.to_minor_units(payout.amount, payout.currency)
        if transfer.amount != expected or transfer.currency != payout.currency or transfer.reversed:
            reversed_ = ", reversed" if transfer.reversed else ""
            result.add(
                "transfer_mismatch",
                f"Payout {payout.pk} is {payout.amount} {payout.currency}; Stripe's transfer {transfer.id} is "
                f"{transfer.amount} minor units of {transfer.currency}{reversed_}.",
                payout.currency,
                **ids,
            )
    result.stripe["transfers_checked"] = checked
    result.stripe["transfers_unchecked"] = transfers.count() - checked
