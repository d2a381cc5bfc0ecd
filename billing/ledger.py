"""The balance ledger's writes (services): entries made once per cause, staff terms and adjustments, and invoices
settled from the balance when money comes in.

Every movement is a BalanceEntry row, immutable in the database (migration 0005) and unique by its `key`, which
names its cause (`top_up:<payment intent>`, `refund:<payment intent>:<refunded so far>`, `dispute:<id>`,
`bank:<org>:<reference>`, `settlement:invoice:<id>`, ...): recording the same cause twice, in any order or
concurrently, makes one entry. Each writer locks the organisation's row first among balance rows (lease admission
reads the balance under that lock: billing/funds.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from billing.invoicing import invoices_settle_from_balance
from billing.models import BalanceEntry, BillingTerms, PaymentMode
from billing.terms import Terms, terms_of

_PLATFORM = "a balance entry is made for the organisation its cause names (a verified Stripe event, a staff action)"

# The most a credit limit or a single adjustment may be (money columns hold 16 digits before the point).
MOST = Decimal("1000000000000")
CENT = Decimal("0.01")
# A bank reference is part of its entry's key (`bank:<org>:<reference>`, 120 characters at most).
REFERENCE_MAX = 80


def _money(value: Any, name: str, *, allow_negative: bool = False) -> Decimal:
    """A money amount with at most two decimal places, within MOST; a 400 naming `name` otherwise."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        amount = Decimal("NaN")
    low = -MOST if allow_negative else Decimal(0)
    if not amount.is_finite() or amount != amount.quantize(CENT) or not low <= amount <= MOST:
        message = f"An amount from {low} to {MOST} with at most two decimal places."
        raise InvalidInput(message, fields={name: [message]})
    return amount.quantize(CENT)


def currency_check(org: Organization, currency: str, terms: Terms | None = None) -> str:
    """`currency` if it is the one the organisation is billed in; a 400 otherwise."""
    billed = (terms or terms_of(org)).currency
    if currency != billed:
        message = f"This organisation is billed in {billed}."
        raise InvalidInput(message, fields={"currency": [message]})
    return currency


@platform_work(_PLATFORM)
def entry_add(
    *, org_id: int, kind: str, amount: Decimal, currency: str, key: str, now: datetime | None = None, **fields: Any
) -> tuple[BalanceEntry, bool]:
    """Record one movement of the balance, once per `key`: (the entry, whether it is new). A credit settles the
    open invoices of a prepaid organisation that the balance now covers, oldest first."""
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org_id).first()
        existing = BalanceEntry.objects.filter(key=key).first()
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                entry = BalanceEntry.objects.create(
                    organization_id=org_id,
                    kind=kind,
                    amount=amount,
                    currency=currency,
                    key=key,
                    created_at=now or timezone.now(),
                    **fields,
                )
        except IntegrityError:
            existing = BalanceEntry.objects.filter(key=key).first()
            if existing is None:
                raise
            return existing, False
    if amount > 0:
        invoices_settle(org=Organization.objects.get(pk=org_id), now=now)
    return entry, True


@platform_work(_PLATFORM)
def invoices_settle(*, org: Organization, now: datetime | None = None) -> int:
    """Settle a prepaid organisation's open invoices from its balance, oldest first, while it covers them."""
    return invoices_settle_from_balance(org=org, now=now)


@platform_work(_PLATFORM)
def terms_set(
    *, org: Organization, mode: str, credit_limit: Decimal | None, currency: str, by: User | None = None
) -> BillingTerms:
    """Staff set how an organisation pays (a new BillingTerms row; the old ones stay as its history).

    A postpaid organisation may have no credit limit (None: never refused or stopped for money); a prepaid one's
    limit is how far below zero its balance may go (0: none). The currency is the organisation's own: its leases
    are priced in it, so its balance and limit are too."""
    if mode not in PaymentMode.values:
        raise InvalidInput("The mode is prepaid or postpaid.", fields={"mode": ["Use prepaid or postpaid."]})
    if credit_limit is None and mode == PaymentMode.PREPAID:
        message = "A prepaid organisation's credit limit is an amount (0 for none)."
        raise InvalidInput(message, fields={"credit_limit": [message]})
    limit = None if credit_limit is None else _money(credit_limit, "credit_limit")
    if currency != org.currency:
        message = f"This organisation is billed in {org.currency}."
        raise InvalidInput(message, fields={"currency": [message]})
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        terms = BillingTerms.objects.create(
            organization=org, mode=mode, credit_limit=limit, currency=currency, set_by=by
        )
    if limit is not None:
        invoices_settle(org=org)
    return terms


@platform_work(_PLATFORM)
def adjustment_record(
    *,
    org: Organization,
    amount: Any,
    currency: str,
    reason: str = "",
    reference: str = "",
    by: User | None = None,
    now: datetime | None = None,
) -> tuple[BalanceEntry, bool]:
    """Staff record money received by bank transfer (a positive amount with the bank's reference) or adjust a
    balance with a reason (a goodwill credit; a negative amount takes money off). One bank reference is one
    transfer: recording it again returns the first entry (created False), or 409 if the amount differs."""
    value = _money(amount, "amount", allow_negative=True)
    if value == 0:
        raise InvalidInput("An adjustment moves some money.", fields={"amount": ["Not zero."]})
    currency_check(org, currency)
    reason, reference = reason.strip(), reference.strip()
    if len(reference) > REFERENCE_MAX or len(reason) > 300:
        message = f"A reference of at most {REFERENCE_MAX} characters and a reason of at most 300."
        raise InvalidInput(message, fields={"reference" if len(reference) > REFERENCE_MAX else "reason": [message]})
    if not reason and (value < 0 or not reference):
        message = "Say why: a reason (a bank transfer may give its reference instead)."
        raise InvalidInput(message, fields={"reason": [message]})
    if reference and value > 0:
        kind, key = BalanceEntry.Kind.BANK_TRANSFER, f"bank:{org.pk}:{reference}"
    else:
        kind, key = BalanceEntry.Kind.ADJUSTMENT, f"adjustment:{uuid.uuid4().hex}"
    entry, created = entry_add(
        org_id=org.pk,
        kind=kind,
        amount=value,
        currency=currency,
        key=key,
        now=now,
        reason=reason,
        reference=reference,
        created_by=by,
    )
    if not created and (entry.amount != value or entry.currency != currency):
        raise Conflict(
            f"Bank reference {reference} was recorded already, for {entry.amount} {entry.currency}.",
            code="duplicate_reference",
        )
    return entry, created
