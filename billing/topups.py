"""Top-ups (充值): paying money into an organisation's balance with Stripe, and the webhook events that move it.

`top_up_start` makes a PaymentIntent (card, Alipay or WeChat Pay) and its TopUp row; the balance rises only when
Stripe says the payment succeeded, by a `top_up` ledger entry keyed by the intent, so duplicated and reordered
webhooks credit it once. A refund takes off what was refunded since the last refund event (Stripe sends the
charge's running total; a late, smaller total takes nothing); a dispute takes its amount off when it opens and gives
it back if the dispute is won. A refund or dispute that overtakes the success event credits the payment first (a
refunded or disputed charge had succeeded). The TopUp row follows Stripe's state in the order

    pending < failed < canceled < succeeded

and never moves back. Events arrive through billing/payments.stripe_event_receive, which stores each once and
hands those about top-ups to `handler_for`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from accounts.errors import InvalidInput
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from billing import stripe_gateway as gateway
from billing.ledger import _money, currency_check, entry_add
from billing.models import BalanceEntry, StripeEvent, TopUp

logger = logging.getLogger(__name__)

_PLATFORM = "a top-up belongs to the organisation that started it, and a verified Stripe event names its own intent"

_RANK = {TopUp.State.PENDING: 0, TopUp.State.FAILED: 1, TopUp.State.CANCELED: 2, TopUp.State.SUCCEEDED: 3}


@dataclass(frozen=True)
class TopUpStart:
    """What the top-up form needs to confirm the PaymentIntent with Stripe.js."""

    top_up: TopUp
    client_secret: str
    publishable_key: str
    amount: Decimal
    currency: str


@platform_work(_PLATFORM)
def top_up_start(
    *, org: Organization, amount: Any, currency: str, by: User | None = None, attempt: str | None = None
) -> TopUpStart:
    """Start a top-up of `amount` (SUANLI_TOP_UP_MIN..MAX, the organisation's currency): a Stripe PaymentIntent.

    Each call is a new payment unless it names the `attempt` of an earlier one (the top-up form's hidden key): the
    same attempt and amount get the same PaymentIntent and TopUp back (a double-clicked form pays once); the API
    makes its calls idempotent with Idempotency-Key instead. Raises
    PaymentsNotConfigured (503) without a Stripe key, stripe_gateway.StripeUnavailable when Stripe cannot answer.
    """
    value = _money(amount, "amount")
    low, high = settings.SUANLI_TOP_UP_MIN, settings.SUANLI_TOP_UP_MAX
    if not low <= value <= high:
        message = f"A top-up is from {low} to {high}."
        raise InvalidInput(message, fields={"amount": [message]})
    currency_check(org, currency)
    gateway.payments_configured_check()
    customer_id = gateway.customer_ensure(org=org)
    key = f"{attempt}-{gateway.to_minor_units(value, currency)}" if attempt else uuid.uuid4().hex
    intent = gateway.top_up_intent_create(org=org, amount=value, currency=currency, customer_id=customer_id, key=key)
    top_up, _ = TopUp.objects.get_or_create(
        stripe_payment_intent=intent.id,
        defaults={"organization": org, "amount": intent.amount, "currency": intent.currency, "created_by": by},
    )
    return TopUpStart(
        top_up=top_up,
        client_secret=intent.client_secret,
        publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
        amount=top_up.amount,
        currency=top_up.currency,
    )


# --- webhook events ---------------------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any], datetime, StripeEvent], None]


def handler_for(event_type: str, obj: dict[str, Any]) -> Handler | None:
    """The handler of an event about a top-up (None for any other event: an invoice payment's, say)."""
    handler = _HANDLERS.get(event_type)
    if handler is None:
        return None
    if event_type.startswith("payment_intent."):
        if (obj.get("metadata") or {}).get("kind") == "top_up":
            return handler
        intent = obj.get("id")
    else:
        intent = obj.get("payment_intent")
    return handler if TopUp.objects.filter(stripe_payment_intent=str(intent or "")).exists() else None


def _of_intent(obj: dict[str, Any]) -> TopUp | None:
    """The top-up of a PaymentIntent, locked; made from the intent's metadata if Stripe's event overtook our commit."""
    intent_id = str(obj.get("id") or "")
    found = TopUp.objects.select_for_update().filter(stripe_payment_intent=intent_id).first()
    if found is not None:
        return found
    org_id = str((obj.get("metadata") or {}).get("organization_id", ""))
    currency = str(obj.get("currency", "")).upper()
    org = Organization.objects.filter(pk=int(org_id)).first() if org_id.isascii() and org_id.isdigit() else None
    if org is None or currency not in gateway.MINOR_UNIT_EXPONENT or not obj.get("amount"):
        logger.warning("stripe: top-up intent %s names no organisation of ours; ignored", intent_id)
        return None
    TopUp.objects.get_or_create(
        stripe_payment_intent=intent_id,
        defaults={
            "organization": org,
            "amount": gateway.from_minor_units(int(obj["amount"]), currency),
            "currency": currency,
        },
    )
    return TopUp.objects.select_for_update().get(stripe_payment_intent=intent_id)


def _advance(top_up: TopUp, state: str, **fields: Any) -> bool:
    if _RANK[state] <= _RANK[top_up.state]:
        return False
    for name, value in {"state": state, **fields}.items():
        setattr(top_up, name, value)
    top_up.save(update_fields=["state", *fields, "updated_at"])
    return True


def _credit(top_up: TopUp, when: datetime) -> None:
    """The top-up succeeded: its amount goes onto the balance (once)."""
    _advance(top_up, TopUp.State.SUCCEEDED, failure_message="")
    entry_add(
        org_id=top_up.organization_id,
        kind=BalanceEntry.Kind.TOP_UP,
        amount=top_up.amount,
        currency=top_up.currency,
        key=f"top_up:{top_up.stripe_payment_intent}",
        now=when,
        reference=top_up.stripe_payment_intent,
        top_up=top_up,
    )


def _on_succeeded(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    top_up = _of_intent(obj)
    if top_up is None:
        return
    received = obj.get("amount_received", obj.get("amount"))
    if received is None or int(received) < gateway.to_minor_units(top_up.amount, top_up.currency):
        logger.warning("stripe: top-up %s succeeded for only %s minor units; not credited", top_up.pk, received)
        return
    _credit(top_up, created)


def _on_failed(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    top_up = _of_intent(obj)
    if top_up is not None:
        error = obj.get("last_payment_error") or {}
        _advance(top_up, TopUp.State.FAILED, failure_message=str(error.get("message") or "The payment failed.")[:300])


def _on_canceled(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    top_up = _of_intent(obj)
    if top_up is not None:
        _advance(top_up, TopUp.State.CANCELED)


def _of_charge(obj: dict[str, Any]) -> TopUp | None:
    top_up = TopUp.objects.select_for_update().filter(stripe_payment_intent=obj.get("payment_intent") or "").first()
    if top_up is not None and str(obj.get("currency", "")).upper() != top_up.currency:
        logger.warning("stripe: %s %s is not in the currency of top-up %s", obj.get("object"), obj.get("id"), top_up.pk)
        return None
    return top_up


def _on_refunded(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    top_up = _of_charge(obj)
    if top_up is None:
        return
    _credit(top_up, created)
    refunded = gateway.from_minor_units(int(obj.get("amount_refunded") or 0), top_up.currency)
    if refunded <= top_up.refunded:
        return  # a late event with a smaller running total, or a repeat
    entry_add(
        org_id=top_up.organization_id,
        kind=BalanceEntry.Kind.REFUND,
        amount=top_up.refunded - refunded,
        currency=top_up.currency,
        key=f"refund:{top_up.stripe_payment_intent}:{gateway.to_minor_units(refunded, top_up.currency)}",
        now=created,
        reference=str(obj.get("id") or ""),
        top_up=top_up,
    )
    top_up.refunded = refunded
    top_up.save(update_fields=["refunded", "updated_at"])


def _on_dispute(obj: dict[str, Any], created: datetime, event: StripeEvent) -> None:
    """A dispute opened takes its amount off; closed as won, gives it back (each once, by the dispute's id)."""
    top_up = _of_charge(obj)
    if top_up is None:
        return
    _credit(top_up, created)
    amount = gateway.from_minor_units(int(obj.get("amount") or 0), top_up.currency)
    if amount <= 0:
        return
    dispute_id = str(obj.get("id") or "")
    _, opened = entry_add(
        org_id=top_up.organization_id,
        kind=BalanceEntry.Kind.DISPUTE,
        amount=-amount,
        currency=top_up.currency,
        key=f"dispute:{dispute_id}",
        now=created,
        reference=dispute_id,
        top_up=top_up,
    )
    disputed = top_up.disputed + (amount if opened else 0)
    if obj.get("status") == "won":
        _, won = entry_add(
            org_id=top_up.organization_id,
            kind=BalanceEntry.Kind.DISPUTE_WON,
            amount=amount,
            currency=top_up.currency,
            key=f"dispute_won:{dispute_id}",
            now=created,
            reference=dispute_id,
            top_up=top_up,
        )
        disputed -= amount if won else 0
    if disputed != top_up.disputed:
        top_up.disputed = disputed
        top_up.save(update_fields=["disputed", "updated_at"])


_HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": _on_succeeded,
    "payment_intent.payment_failed": _on_failed,
    "payment_intent.canceled": _on_canceled,
    "charge.refunded": _on_refunded,
    "charge.dispute.created": _on_dispute,
    "charge.dispute.closed": _on_dispute,
}
