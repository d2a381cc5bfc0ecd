"""Billing's writes, in one place for its callers: the API, pages, admin actions, Celery tasks and commands.

Each service lives in the module of its concern and is re-exported here unchanged (their docstrings say what they
lock and whether they are idempotent):
- metering.py: `meter` (usage records for every allocation hour that is over);
- invoicing.py: `close_period`, `close_last_period`, `invoice_void`, `credit_note_issue`, `invoices_mark_overdue`;
- payments.py: `invoice_pay` (a Stripe PaymentIntent for an open invoice), `stripe_event_receive` (the webhook);
- payouts.py: `payout_send` (Stripe Connect transfer), `payout_record_bank` (a bank settlement staff record).

Rules that callers held themselves live here instead (`statement_pay`). Reads are in billing/selectors.py.
"""

from __future__ import annotations

from accounts.models import User
from billing.invoicing import close_last_period, close_period, credit_note_issue, invoice_void, invoices_mark_overdue
from billing.metering import meter
from billing.models import Payout, ProviderStatement
from billing.payments import invoice_pay, stripe_event_receive
from billing.payouts import payout_record_bank, payout_send

__all__ = [
    "close_last_period",
    "close_period",
    "credit_note_issue",
    "invoice_pay",
    "invoice_void",
    "invoices_mark_overdue",
    "meter",
    "payout_record_bank",
    "payout_send",
    "statement_pay",
    "stripe_event_receive",
]


def statement_pay(*, statement: ProviderStatement, by: User, bank_reference: str | None = None) -> Payout:
    """Staff pay a provider statement's net: with a bank reference, record that it was settled by bank
    (`payout_record_bank`); without one, send it by Stripe Connect transfer (`payout_send`)."""
    if bank_reference is not None:
        return payout_record_bank(statement=statement, reference=bank_reference, by=by)
    return payout_send(statement=statement, by=by)
