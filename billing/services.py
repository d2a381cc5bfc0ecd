"""Billing's writes, in one place for its callers: the API, pages, admin actions, Celery tasks and commands.

Each service lives in the module of its concern and is re-exported here unchanged (their docstrings say what they
lock and whether they are idempotent):
- metering.py: `meter` (usage records for every allocation hour that is over);
- invoicing.py: `close_period`, `close_last_period`, `invoice_void`, `credit_note_issue`, `invoices_mark_overdue`;
- payments.py: `invoice_pay` (a Stripe PaymentIntent for an open invoice), `stripe_event_receive` (the webhook);
- payouts.py: `payout_send` (Stripe Connect transfer), `payout_record_bank` (a bank settlement staff record);
- ledger.py: `terms_set`, `adjustment_record` (staff), `invoices_settle` (prepaid invoices from the balance);
- topups.py: `top_up_start` (a Stripe PaymentIntent that credits the balance when it succeeds);
- funds.py: `funds_check` (low-balance notices, stopping card-hour leases out of money, spend alerts);
  `spend_limit_set` (a customer's monthly cap and alert shares).

Rules that callers held themselves live here instead (`statement_pay`). Reads are in billing/selectors.py.
"""

from __future__ import annotations

from accounts.models import User
from billing.funds import funds_check, spend_limit_set
from billing.invoicing import close_last_period, close_period, credit_note_issue, invoice_void, invoices_mark_overdue
from billing.ledger import adjustment_record, invoices_settle, terms_set
from billing.metering import meter
from billing.models import Payout, ProviderStatement
from billing.payments import invoice_pay, stripe_event_receive
from billing.payouts import payout_record_bank, payout_send
from billing.topups import top_up_start

__all__ = [
    "adjustment_record",
    "close_last_period",
    "close_period",
    "credit_note_issue",
    "funds_check",
    "invoice_pay",
    "invoice_void",
    "invoices_mark_overdue",
    "invoices_settle",
    "meter",
    "payout_record_bank",
    "payout_send",
    "spend_limit_set",
    "statement_pay",
    "stripe_event_receive",
    "terms_set",
    "top_up_start",
]


def statement_pay(*, statement: ProviderStatement, by: User, bank_reference: str | None = None) -> Payout:
    """Staff pay a provider statement's net: with a bank reference, record that it was settled by bank
    (`payout_record_bank`); without one, send it by Stripe Connect transfer (`payout_send`)."""
    if bank_reference is not None:
        return payout_record_bank(statement=statement, reference=bank_reference, by=by)
    return payout_send(statement=statement, by=by)
