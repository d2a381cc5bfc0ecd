"""Check (a), invoice side: each finalised invoice's subtotal is the sum of its lines, its credits the sum of their
SLA credits, its tax the rate of the rest and its total subtotal - credits + tax (`invoice_sums`); adds the
month's invoiced totals."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Sum

from billing import rating
from billing.invoicing import Period
from billing.models import Invoice, InvoiceLine
from billing.reconciliation.report import ZERO, Reconciliation


def check_invoices(result: Reconciliation, period: Period) -> None:
    sums = {
        row["invoice_id"]: row
        for row in InvoiceLine.objects.filter(invoice__period=period.label)
        .values("invoice_id")
        .annotate(s=Sum("amount"), c=Sum("sla_credit"))
        .order_by("invoice_id")
    }
    invoices = Invoice.objects.filter(period=period.label).exclude(state=Invoice.State.DRAFT).order_by("id")
    for invoice in invoices:
        row = sums.get(invoice.pk, {"s": ZERO, "c": ZERO})
        problems = _sum_problems(invoice, subtotal=row["s"] or ZERO, credits=row["c"] or ZERO)
        if problems:
            result.add(
                "invoice_sums",
                f"Invoice {invoice}: {'; '.join(problems)}.",
                invoice.currency,
                invoices=[str(invoice)],
            )
        totals = result.total(invoice.currency)
        totals["invoiced_subtotal"] += invoice.subtotal
        totals["sla_credits"] += invoice.credits
        totals["invoiced"] += invoice.subtotal - invoice.credits
        totals["tax"] += invoice.tax
        totals["invoiced_total"] += invoice.total


def _sum_problems(invoice: Invoice, *, subtotal: Decimal, credits: Decimal) -> list[str]:
    """What of the invoice's subtotal, credits, tax and total does not add up (`subtotal`, `credits`: its lines')."""
    taxed = invoice.subtotal - invoice.credits
    tax = rating.to_money(taxed * invoice.tax_rate)
    problems = []
    if invoice.subtotal != subtotal:
        problems.append(f"subtotal {invoice.subtotal} but its lines sum to {subtotal}")
    if invoice.credits != credits:
        problems.append(f"credits {invoice.credits} but its lines' SLA credits sum to {credits}")
    if invoice.tax != tax:
        problems.append(f"tax {invoice.tax} but {invoice.tax_rate} of {taxed} is {tax}")
    if invoice.total != invoice.subtotal - invoice.credits + invoice.tax:
        problems.append(f"total {invoice.total} is not subtotal - credits + tax")
    return problems
