"""Reconciling a closed month: metered usage against invoices, payments, provider statements, payouts and Stripe.

`reconcile("YYYY-MM")` reads (it writes nothing) and returns the month's totals per currency and every mismatch,
each with a kind, a message and the objects behind it (ids, invoice numbers). The checks:

(a) metered = invoiced + credited. Every usage record of the month is on the invoice line of its organisation,
    currency, lease, plan and unit price (`usage_not_invoiced`), and none was written after its invoice was issued
    (`usage_after_close`); each line's amount is to_money of the sum of its records' amounts (`line_amount`,
    `line_without_usage`); each invoice's subtotal is the sum of its lines, its credits the sum of their SLA
    credits, its tax the rate of the rest and its total subtotal - credits + tax (`invoice_sums`). Storage records
    likewise against their volumes' storage lines, and each against its own rating and volume (storage.py:
    `storage_not_invoiced`, `storage_after_close`, `storage_line_amount`, `storage_line_without_records`,
    `storage_record`). Data-access records against their sessions' lines and each against its session
    (data_access.py: `access_not_invoiced`, `access_after_close`, `access_line_amount`,
    `access_line_without_records`, `access_record`).
(b) invoiced = paid + open + void, per currency: a month has no draft invoice left (`invoice_draft`); each paid
    invoice with a total is covered by succeeded Stripe payments in its currency (`paid_without_payment`); no open
    or void invoice has taken money (`payment_on_unpaid_invoice`) and none more than its total
    (`invoice_overpaid`).
(c) Providers: each statement's net + commission + credits is its gross (`statement_sums`); its gross is to_money
    of its provider's usage and storage of the month in its currency (`statement_gross`, `usage_without_statement`); its
    commission is gross x take rate (`statement_commission`); its credits are the SLA credits and credit notes
    charged back to it (`statement_credits`). A paid statement has one paid payout of exactly its net
    (`payout_missing`, `payout_amount`); an open one has none (`payout_on_open_statement`).
(d) Stripe: each succeeded (or since refunded) payment of the month's invoices is matched against Stripe. With
    Stripe configured, the SDK fetches the PaymentIntent with its charge's balance transaction expanded (Stripe,
    and the localstripe fake of the tests, provide it): the charge must have succeeded with a balance transaction
    of the payment's amount and currency (a charge settled in another currency is compared by the charge's own
    amount). Where the API cannot answer (Stripe not configured, unreachable, or no balance transaction on the
    charge), the payment is compared against the stored webhook events instead: a `payment_intent.succeeded` event
    for its intent whose `amount_received` and currency are the payment's. `payment_unconfirmed` when neither
    confirms it, `payment_stripe_amount` when Stripe's amount differs. Paid Connect payouts are fetched too
    (`transfer_mismatch`, `transfer_unconfirmed`). `stripe` in the result says how many were checked which way.
(f) Resale (issue 20, resale.py): each resold card-second lies inside its reseller's contract on the same card, is
    the reseller's revenue (`resale_provider`, `resale_unbacked`), and its contract's own usage of that second is still
    billed to the reseller at the contract price and earned by the server's owner (`resale_contract_unbilled`); per
    reseller the month's resale revenue, commission, net, contract cost and margin are added up (`resale`).

Lists of ids in a mismatch are cut at MAX_IDS (the message gives the full count).

This package holds `reconcile` and one module per check: usage.py, storage.py, data_access.py and invoices.py (a),
payments.py (b), statements.py (c), stripe_checks.py (d), ledger.py (e), resale.py (f); report.py holds the result, its
CSV export and the shared reads; records.py the one check of a kind of record billed on lines of its own, which
storage.py and data_access.py each give their model, words and test against the volume or session.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from accounts.errors import Conflict
from accounts.tenancy import platform_work
from billing import stripe_gateway as gateway
from billing.invoicing import period_of
from billing.reconciliation.data_access import check_data_access
from billing.reconciliation.invoices import check_invoices
from billing.reconciliation.ledger import LEDGER_KINDS, check_ledger
from billing.reconciliation.payments import check_payments
from billing.reconciliation.report import MAX_IDS, Mismatch, Reconciliation, mismatches_csv
from billing.reconciliation.resale import check_resale
from billing.reconciliation.statements import check_statements
from billing.reconciliation.storage import check_storage
from billing.reconciliation.stripe_checks import check_stripe_payments, check_stripe_transfers
from billing.reconciliation.usage import check_usage

__all__ = ["LEDGER_KINDS", "MAX_IDS", "Mismatch", "Reconciliation", "mismatches_csv", "reconcile"]

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "reconciliation is the staff's report over every tenant's money"


@platform_work(_PLATFORM)
def reconcile(label: str, *, now: datetime | None = None, stripe_api: bool = True) -> Reconciliation:
    """Totals and mismatches of a month that is over (InvalidInput for a bad label, Conflict while it runs).

    Reads only. `stripe_api=False` skips the calls to Stripe (payments are then matched against the stored
    webhook events alone, and transfers are not fetched).
    """
    now = now or timezone.now()
    period = period_of(label)
    if now < period.end:
        raise Conflict(f"{label} is not over yet (it ends {period.end.isoformat()}).", code="period_open")
    result = Reconciliation(period=label, checked_at=now)
    check_usage(result, period)
    check_storage(result, period)
    check_data_access(result, period)
    check_invoices(result, period)
    check_payments(result, period)
    check_statements(result, period)
    check_resale(result, period)
    use_api = stripe_api and gateway.configured()
    check_stripe_payments(result, period, use_api=use_api)
    check_stripe_transfers(result, period, use_api=use_api)
    check_ledger(result, period, use_api=use_api)
    return result
