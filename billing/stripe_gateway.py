"""The one module that talks to Stripe: customers, PaymentIntents, Connect transfers and webhook signatures.

Everything else in Suanli speaks `Decimal` and our own rows; Stripe's minor units, ids and SDK objects stay in
here. Each write to Stripe carries an idempotency key derived from our own row (the organisation, the invoice
or the provider statement, and its attempt), so a retry after a crash between Stripe's answer and our commit
gets the same object back instead of a second one (Stripe keeps a key for at least 24 hours).

Every SDK call goes through `_call`, the one place Stripe's errors are wrapped: `StripeRefused` where Stripe
answered and said no (an invalid request, an unknown id, a permission the account lacks), `StripeUnavailable`
(its base) for the rest (network trouble, Stripe's own faults, online payments not configured). Neither is a
DomainError: the API turns them into `PaymentProviderError` (502) outside the Idempotency-Key record, so a
transient fault is never replayed.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from rest_framework import status

from accounts.errors import DomainError
from accounts.models import Organization
from billing.models import Invoice, ProviderStatement, StripeCustomer

logger = logging.getLogger(__name__)

# Seconds to connect to / wait for Stripe, and how often the SDK retries a network fault or a 409/5xx (each retry
# resends the same idempotency key, so it cannot create twice). The pay request waits on this, so keep it short.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 20
MAX_NETWORK_RETRIES = 2
# Stripe's default tolerance for the age of a webhook's signed timestamp (replay protection).
WEBHOOK_TOLERANCE_SECONDS = 300

# Decimal places of each currency's minor unit (USD cents, CNY fen).
MINOR_UNIT_EXPONENT = {"CNY": 2, "USD": 2}

# Payment methods offered per invoice currency. Stripe presents Alipay in CNY and USD (among others, depending on
# the account's country) and WeChat Pay in CNY and USD too (docs.stripe.com/payments/alipay,
# docs.stripe.com/payments/wechat-pay): a Chinese customer pays a CNY or USD invoice from their wallet, anyone else
# by card. Each method must also be switched on in the Stripe Dashboard of the account.
PAYMENT_METHOD_TYPES: dict[str, tuple[str, ...]] = {
    "CNY": ("card", "alipay", "wechat_pay"),
    "USD": ("card", "alipay", "wechat_pay"),
}
# WeChat Pay must know where the QR code is shown; our pay page is on the web.
PAYMENT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {"wechat_pay": {"client": "web"}}


# What a customer is told when Stripe cannot answer; staff paying a provider are told it is Stripe.
UNREACHABLE = "The payment provider could not be reached; try again."
UNREACHABLE_FOR_STAFF = "Stripe could not be reached; try again."


class StripeUnavailable(Exception):
    """Stripe could not be reached, or refused the request (the message is safe to show)."""


class StripeRefused(StripeUnavailable):
    """Stripe answered and said no (4xx other than 409/429): the same request will be refused again.

    The message is the one shown to a customer (Stripe's `user_message`, else UNREACHABLE); `reason` is Stripe's
    own words for staff, and `http_status` its answer (404 for an id it does not know).
    """

    def __init__(self, message: str, *, reason: str, http_status: int | None):
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status


class PaymentProviderError(DomainError):
    """What the API answers for StripeUnavailable (raised by the view, outside its Idempotency-Key record)."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "payment_provider_error"


class PaymentsNotConfigured(DomainError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "payments_not_configured"


def payments_configured_check() -> None:
    """Raise PaymentsNotConfigured unless a Stripe secret key is set."""
    if not configured():
        raise PaymentsNotConfigured("Online payments are not configured on this site.")


class SignatureInvalid(Exception):
    """A webhook whose signature, timestamp or body does not check out (`code` says which)."""

    def __init__(self, message: str, *, code: str = "signature_invalid"):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Intent:
    id: str
    client_secret: str
    status: str
    amount: Decimal
    currency: str


def configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """`amount` in the currency's smallest unit (12.34 USD -> 1234), rounded half-up."""
    scale = Decimal(10) ** MINOR_UNIT_EXPONENT[currency.upper()]
    return int((amount * scale).to_integral_value(rounding=ROUND_HALF_UP))


def from_minor_units(amount: int, currency: str) -> Decimal:
    exponent = MINOR_UNIT_EXPONENT[currency.upper()]
    return (Decimal(int(amount)) / (Decimal(10) ** exponent)).quantize(Decimal(1).scaleb(-exponent))


@functools.lru_cache(maxsize=4)
def _client(api_key: str, api_base: str) -> stripe.StripeClient:
    options: dict[str, Any] = {}
    if api_base:
        options["base_addresses"] = {"api": api_base.rstrip("/")}
    return stripe.StripeClient(
        api_key,
        max_network_retries=MAX_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)),
        **options,
    )


def client() -> stripe.StripeClient:
    if not configured():
        raise StripeUnavailable("Online payments are not configured.")
    return _client(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE or "")


def _call(what: str, fn: Any, *args: Any, unreachable: str = UNREACHABLE, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` of the SDK, its errors wrapped (the one place they are): StripeRefused for Stripe's own
    refusals, StripeUnavailable with `unreachable` (or Stripe's user_message) for the rest."""
    try:
        return fn(*args, **kwargs)
    except (stripe.InvalidRequestError, stripe.PermissionError) as exc:
        logger.warning("stripe: %s refused: %s (request %s)", what, exc, getattr(exc, "request_id", None))
        user_message = getattr(exc, "user_message", None)
        raise StripeRefused(
            user_message or unreachable, reason=user_message or str(exc), http_status=exc.http_status
        ) from exc
    except stripe.StripeError as exc:
        logger.warning("stripe: %s failed: %s (request %s)", what, exc, getattr(exc, "request_id", None))
        raise StripeUnavailable(getattr(exc, "user_message", None) or unreachable) from exc


def _intent(obj: Any) -> Intent:
    currency = str(obj["currency"]).upper()
    return Intent(
        id=obj["id"],
        client_secret=obj["client_secret"],
        status=obj["status"],
        amount=from_minor_units(obj["amount"], currency),
        currency=currency,
    )


def customer_ensure(*, org: Organization) -> str:
    """The organisation's Stripe Customer id, creating the Customer (and its StripeCustomer row) the first time.

    Race-safe: the organisation row is locked while the Customer is made, so concurrent callers wait and then
    find the row; the Stripe idempotency key covers a crash between Stripe's answer and our commit.
    """
    existing = StripeCustomer.objects.filter(organization=org).values_list("customer_id", flat=True).first()
    if existing:
        return existing
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        existing = StripeCustomer.objects.filter(organization=org).values_list("customer_id", flat=True).first()
        if existing:
            return existing
        customer = _call(
            "customer create",
            client().v1.customers.create,
            params={"name": org.name, "metadata": {"organization_id": str(org.pk)}},
            options={"idempotency_key": f"suanli-org-{org.pk}-customer"},
        )
        try:
            with transaction.atomic():
                StripeCustomer.objects.create(organization=org, customer_id=customer["id"])
        except IntegrityError:
            # Only reachable if another path inserted without the lock; the row that won is the customer.
            return StripeCustomer.objects.get(organization=org).customer_id
        return customer["id"]


def _payment_methods(currency: str) -> dict[str, Any]:
    """The payment methods offered in `currency` and their options (PAYMENT_METHOD_TYPES)."""
    methods = PAYMENT_METHOD_TYPES[currency]
    return {
        "payment_method_types": list(methods),
        "payment_method_options": {m: options for m, options in PAYMENT_METHOD_OPTIONS.items() if m in methods},
    }


def payment_intent_create(*, invoice: Invoice, customer_id: str, attempt: int) -> Intent:
    """A PaymentIntent for the invoice's amount due (its total less credit notes); the same invoice and attempt
    always get the same intent."""
    currency = invoice.currency.upper()
    params = {
        "amount": to_minor_units(invoice.amount_due(), currency),
        "currency": currency.lower(),
        "customer": customer_id,
        **_payment_methods(currency),
        "metadata": {
            "invoice_id": str(invoice.pk),
            "invoice_number": invoice.number,
            "organization_id": str(invoice.organization_id),
        },
    }
    intent = _call(
        "payment intent create",
        client().v1.payment_intents.create,
        params=params,
        options={"idempotency_key": f"suanli-invoice-{invoice.pk}-attempt-{attempt}"},
    )
    return _intent(intent)


def top_up_intent_create(*, org: Organization, amount: Decimal, currency: str, customer_id: str, key: str) -> Intent:
    """A PaymentIntent for a top-up of `amount` to the organisation's balance, by card, Alipay or WeChat Pay; the
    same `key` always gets the same intent. Its metadata names it a top-up (webhooks find it by that)."""
    currency = currency.upper()
    params = {
        "amount": to_minor_units(amount, currency),
        "currency": currency.lower(),
        "customer": customer_id,
        **_payment_methods(currency),
        "description": "Suanli balance top-up",
        "metadata": {"kind": "top_up", "organization_id": str(org.pk)},
    }
    intent = _call(
        "top-up intent create",
        client().v1.payment_intents.create,
        params=params,
        options={"idempotency_key": f"suanli-org-{org.pk}-top-up-{key}"},
    )
    return _intent(intent)


def payment_intent_cancel(intent_id: str) -> Intent:
    return _intent(_call("payment intent cancel", client().v1.payment_intents.cancel, intent_id))


def payment_intent_retrieve(intent_id: str) -> Intent:
    return _intent(_call("payment intent retrieve", client().v1.payment_intents.retrieve, intent_id))


def payment_intent_settlement(intent_id: str) -> dict[str, Any]:
    """The PaymentIntent as plain JSON with its latest charge's balance transaction expanded (reconciliation reads
    what Stripe says it took)."""
    intent = _call(
        "payment intent retrieve",
        client().v1.payment_intents.retrieve,
        intent_id,
        params={"expand": ["latest_charge.balance_transaction"]},
    )
    return intent.to_dict()


# --- Stripe Connect: paying providers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    id: str
    amount: int  # minor units
    currency: str  # upper case
    destination: str
    reversed: bool


def _transfer(found: Any) -> Transfer:
    obj = found.to_dict() if hasattr(found, "to_dict") else dict(found)
    return Transfer(
        id=obj["id"],
        amount=int(obj["amount"]),
        currency=str(obj["currency"]).upper(),
        destination=str(obj.get("destination") or ""),
        reversed=bool(obj.get("reversed")),
    )


def transfer_create(*, statement: ProviderStatement, destination: str, attempt: int) -> Transfer:
    """A Connect transfer of the statement's net to `destination`; the same statement and attempt always get the
    same transfer. StripeRefused when Stripe says no (e.g. the account cannot receive transfers)."""
    currency = statement.currency.upper()
    params = {
        "amount": to_minor_units(statement.net, currency),
        "currency": currency.lower(),
        "destination": destination,
        "transfer_group": f"suanli-statement-{statement.pk}",
        "description": f"Suanli payout {statement.period}",
        "metadata": {
            "statement_id": str(statement.pk),
            "organization_id": str(statement.organization_id),
            "period": statement.period,
        },
    }
    obj = _call(
        "transfer create",
        client().v1.transfers.create,
        params=params,
        options={"idempotency_key": f"suanli-statement-{statement.pk}-payout-{attempt}"},
        unreachable=UNREACHABLE_FOR_STAFF,
    )
    return _transfer(obj)


def transfer_retrieve(transfer_id: str) -> Transfer:
    """StripeRefused for an id Stripe does not know, StripeUnavailable when it cannot be reached."""
    return _transfer(
        _call("transfer retrieve", client().v1.transfers.retrieve, transfer_id, unreachable=UNREACHABLE_FOR_STAFF)
    )


# --- webhooks -------------------------------------------------------------------------------------------------


def event_verify(payload: bytes, signature_header: str | None) -> dict[str, Any]:
    """The webhook's event as plain JSON, once the SDK has checked its signature and timestamp."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise SignatureInvalid("The Stripe webhook secret is not configured.", code="webhook_not_configured")
    try:
        stripe.Webhook.construct_event(payload, signature_header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise SignatureInvalid("The Stripe signature does not match.") from exc
    except ValueError as exc:  # a signed body that is not JSON
        raise SignatureInvalid("The webhook body is not JSON.", code="malformed_event") from exc
    event = json.loads(payload)
    if not isinstance(event, dict) or not all(k in event for k in ("id", "type", "created", "data")):
        raise SignatureInvalid("The webhook body is not a Stripe event.", code="malformed_event")
    return event
