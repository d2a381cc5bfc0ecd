"""Paying providers their statements' net: a Stripe Connect transfer, or a bank settlement staff record (services).

A statement is paid once. The database allows one live (pending or paid) payout per statement (`payout_once`);
the services below lock the statement row, refuse a statement that is paid or has nothing to pay (net <= 0),
make the payout and mark the statement `paid` in one transaction.

Stripe Connect (the transfer is made by billing/stripe_gateway.py): it carries an idempotency key derived from
the statement and its attempt (`suanli-statement-<id>-payout-<n>`, n = failed payouts so far + 1), so a retry
after a crash between Stripe's answer and our commit gets the same transfer back instead of a second one (Stripe
keeps a key for at least 24 hours; the SDK's own retries resend the same key). A transfer Stripe refuses is
recorded as a `failed` payout (with Stripe's message) and the next attempt uses a new key. Providers Stripe
Connect cannot pay (no `ProviderTerms.stripe_account`, e.g. in mainland China) are settled by bank: staff pay
them outside Suanli and record the bank reference here.

Lock order: the statement row, for the length of the Stripe call, so concurrent senders make one transfer.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from accounts.access import is_platform_staff
from accounts.errors import Conflict, DomainError, InvalidInput, InvalidTransition, NotAllowed
from accounts.models import User
from accounts.tenancy import platform_work
from billing import stripe_gateway as gateway
from billing.models import Payout, ProviderStatement, ProviderTerms
from billing.payments import payments_configured_check

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "staff pay any provider's statement"


class BankSettlementRequired(Conflict):
    code = "bank_settlement_required"


class NothingToPay(Conflict):
    code = "nothing_to_pay"


class PayoutRefused(DomainError):
    """Stripe answered and said no (e.g. the connected account cannot receive transfers); recorded as failed."""

    status_code = status.HTTP_502_BAD_GATEWAY
    code = "payout_failed"


def _staff_check(by: User | None, *, required: bool) -> None:
    if by is None and not required:
        return  # a job of the platform itself
    if not is_platform_staff(by):
        raise NotAllowed("Only platform staff can pay providers.")


def _lock_payable(statement: ProviderStatement) -> ProviderStatement:
    """The statement, locked; refused unless it is open, unpaid and has a positive net."""
    locked = ProviderStatement.objects.select_for_update().get(pk=statement.pk)
    if locked.state == ProviderStatement.State.PAID or locked.payouts.exclude(state=Payout.State.FAILED).exists():
        raise InvalidTransition(f"The statement of {locked.period} ({locked.currency}) is already paid.")
    if locked.net <= 0:
        raise NothingToPay(f"The statement's net is {locked.net} {locked.currency}: there is nothing to pay out.")
    return locked


def _paid(statement: ProviderStatement, **fields: Any) -> Payout:
    """Record the paid payout and mark the statement paid (inside the caller's transaction, statement locked)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            payout = Payout.objects.create(
                statement=statement,
                organization_id=statement.organization_id,
                amount=statement.net,
                currency=statement.currency,
                state=Payout.State.PAID,
                paid_at=now,
                **fields,
            )
    except IntegrityError:  # payout_once: only reachable without the statement lock
        raise InvalidTransition("This statement is already paid.") from None
    ProviderStatement.objects.filter(pk=statement.pk).update(state=ProviderStatement.State.PAID)
    statement.state = ProviderStatement.State.PAID
    return payout


def stripe_account_of(provider_id: int) -> str:
    return (
        ProviderTerms.objects.filter(organization_id=provider_id).values_list("stripe_account", flat=True).first() or ""
    ).strip()


@platform_work(_PLATFORM)
def payout_send(*, statement: ProviderStatement, by: User | None = None) -> Payout:
    """Pay the statement's net to the provider's Stripe Connect account with a transfer.

    Idempotent against Stripe (see the module docstring); a statement already paid is refused (409
    invalid_state), as is one with net <= 0 (409 nothing_to_pay), one of a provider without a Stripe account
    (409 bank_settlement_required: staff record a bank settlement instead) and any while Stripe is not configured
    (503). `by` is the staff member (None for a job of the platform). Raises PayoutRefused (502, a failed payout
    recorded) when Stripe refuses the transfer, stripe_gateway.StripeUnavailable (nothing recorded) when Stripe
    cannot be reached.
    """
    _staff_check(by, required=False)
    refused: str | None = None
    with transaction.atomic():
        locked = _lock_payable(statement)
        account = stripe_account_of(locked.organization_id)
        if not account:
            raise BankSettlementRequired(
                "This provider has no Stripe Connect account: pay it by bank and record the settlement "
                "with its bank reference."
            )
        payments_configured_check()
        attempt = locked.payouts.filter(state=Payout.State.FAILED).count() + 1
        try:
            transfer = gateway.transfer_create(statement=locked, destination=account, attempt=attempt)
        except gateway.StripeRefused as exc:
            refused = exc.reason
            Payout.objects.create(
                statement=locked,
                organization_id=locked.organization_id,
                method=Payout.Method.STRIPE_TRANSFER,
                amount=locked.net,
                currency=locked.currency,
                state=Payout.State.FAILED,
                failure_message=refused[:300],
                recorded_by=by,
            )
        else:
            payout = _paid(locked, method=Payout.Method.STRIPE_TRANSFER, reference=transfer.id, recorded_by=by)
    if refused is not None:
        raise PayoutRefused(f"Stripe refused the transfer: {refused}")
    statement.state = locked.state
    return payout


@platform_work(_PLATFORM)
def payout_record_bank(*, statement: ProviderStatement, reference: str, by: User) -> Payout:
    """Staff record that the statement's net was paid by bank transfer under `reference` (the bank's id).

    Refused unless `by` is staff (403), for a blank reference (400), a paid statement (409 invalid_state) or one
    with net <= 0 (409 nothing_to_pay). Locks the statement row.
    """
    _staff_check(by, required=True)
    reference = (reference or "").strip()
    if not reference or len(reference) > 200:
        message = "A bank reference of 1 to 200 characters is required."
        raise InvalidInput(message, fields={"bank_reference": [message]})
    with transaction.atomic():
        locked = _lock_payable(statement)
        payout = _paid(locked, method=Payout.Method.BANK, reference=reference, recorded_by=by)
    statement.state = locked.state
    return payout
