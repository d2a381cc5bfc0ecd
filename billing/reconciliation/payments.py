"""Check (b): invoiced = paid + open + void, per currency. A month has no draft invoice left (`invoice_draft`); each
paid invoice with a total is covered by succeeded Stripe payments in its currency or by its settlement from the
balance (`paid_without_payment`, `payment_currency`); no open or void invoice has taken money
(`payment_on_unpaid_invoice`) and none more than its total (`invoice_overpaid`). A paid invoice of an organisation
that was prepaid when it was paid, with neither, is ledger.py's `settlement_missing` rather than listed here too.
Adds the payments, refunds, settlements and credit notes of the month's invoices to the totals."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db.models import Sum

from billing.invoicing import Period
from billing.models import BalanceEntry, CreditNote, Invoice, Payment
from billing.reconciliation.report import RECEIVED, ZERO, Reconciliation, prepaid_when


def check_payments(result: Reconciliation, period: Period) -> None:
    invoices = list(Invoice.objects.filter(period=period.label).order_by("id"))
    received, payment_ids = _received(result, period, {invoice.pk: invoice.currency for invoice in invoices})
    for note in CreditNote.objects.filter(invoice__period=period.label).values("currency").annotate(a=Sum("amount")):
        result.total(note["currency"])["credit_notes"] += note["a"]
    for invoice in invoices:
        result.total(invoice.currency)[invoice.state] += invoice.total
        _check_invoice(result, period, invoice, received[invoice.pk], payment_ids[invoice.pk])


def _received(
    result: Reconciliation, period: Period, currency_of: dict[int, str]
) -> tuple[dict[int, Decimal], dict[int, list[int]]]:
    """What succeeded payments took per invoice in its own currency, and their ids (refunds and payments added to
    the totals; a payment in another currency than its invoice's is a `payment_currency` mismatch)."""
    received: dict[int, Decimal] = defaultdict(lambda: ZERO)
    payment_ids: dict[int, list[int]] = defaultdict(list)
    for payment in Payment.objects.filter(invoice__period=period.label).order_by("id"):
        result.total(payment.currency)["refunded"] += payment.refunded
        if payment.state not in RECEIVED:
            continue
        payment_ids[payment.invoice_id].append(payment.pk)
        result.total(payment.currency)["payments_received"] += payment.amount
        if payment.currency != currency_of[payment.invoice_id]:
            result.add(
                "payment_currency",
                f"Payment {payment.pk} ({payment.stripe_payment_intent}) took {payment.amount} {payment.currency} "
                f"for an invoice in another currency.",
                payment.currency,
                payments=[payment.pk],
            )
            continue
        received[payment.invoice_id] += payment.amount
    settlements = BalanceEntry.objects.filter(kind=BalanceEntry.Kind.SETTLEMENT, invoice__period=period.label)
    for entry in settlements.order_by("id"):
        result.total(entry.currency)["settled_from_balance"] -= entry.amount
        if entry.currency == currency_of[entry.invoice_id]:  # another currency is ledger.py's settlement_mismatch
            received[entry.invoice_id] -= entry.amount
    return received, payment_ids


def _check_invoice(
    result: Reconciliation, period: Period, invoice: Invoice, took: Decimal, payment_ids: list[int]
) -> None:
    label = str(invoice)
    if invoice.state == Invoice.State.DRAFT:
        result.add(
            "invoice_draft",
            f"Invoice {label} of organisation {invoice.organization_id} is still a draft: it was never "
            f"finalised, so {period.label} is not invoiced = paid + open + void.",
            invoice.currency,
            invoices=[label],
            organizations=[invoice.organization_id],
        )
    elif invoice.state == Invoice.State.PAID and invoice.amount_due() > 0 and took < invoice.amount_due():
        if took == 0 and not payment_ids and prepaid_when(invoice.organization_id, invoice.paid_at):
            return  # paid from the balance without a settlement: ledger.py lists it as settlement_missing
        result.add(
            "paid_without_payment",
            f"Invoice {label} is paid ({invoice.total} {invoice.currency}) but its succeeded Stripe payments "
            f"and settlement from the balance come to {took}.",
            invoice.currency,
            invoices=[label],
            payments=payment_ids,
        )
    elif invoice.state in (Invoice.State.OPEN, Invoice.State.VOID) and took > 0:
        result.add(
            "payment_on_unpaid_invoice",
            f"Invoice {label} is {invoice.state} but Stripe payments took {took} {invoice.currency} for it.",
            invoice.currency,
            invoices=[label],
            payments=payment_ids,
        )
    if took > invoice.total and invoice.state != Invoice.State.OPEN:
        result.add(
            "invoice_overpaid",
            f"Invoice {label} ({invoice.total} {invoice.currency}) took {took} in Stripe payments.",
            invoice.currency,
            invoices=[label],
            payments=payment_ids,
        )
