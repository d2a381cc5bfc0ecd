"""Check (a), usage side: every usage record of the month is on the invoice line of its organisation, currency,
lease, plan and unit price, each line's amount is to_money of its records, and no record was written after its
invoice was issued (`line_without_usage`, `line_amount`, `usage_not_invoiced`, `usage_after_close`)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Sum

from billing import rating
from billing.invoicing import Period
from billing.models import Invoice, InvoiceLine
from billing.reconciliation.report import Reconciliation, first_ids, month_usage, records_after_close

# A usage record's invoice line: the organisation, currency, lease, plan and unit price it is billed under.
LINE_KEY = ("organization_id", "currency", "lease_id", "plan", "unit_price")


def check_usage(result: Reconciliation, period: Period) -> None:
    """Metered totals and the month's usage matched against the lines of its finalised invoices."""
    groups = _usage_groups(period)
    result.counts["usage_records"] = sum(row["n"] for row in groups.values())
    for key, row in groups.items():
        result.total(key[1])["metered"] += rating.to_money(row["a"])
    invoices = {
        inv.pk: inv for inv in Invoice.objects.filter(period=period.label).order_by("id").select_related("organization")
    }
    result.counts["invoices"] = len(invoices)
    seen = _check_lines(result, period, groups, invoices)
    _check_not_invoiced(result, period, {key: row for key, row in groups.items() if key not in seen})
    records_after_close(
        result, period, month_usage(period), code="usage_after_close", noun="usage", ids_key="usage_records"
    )


def _usage_groups(period: Period) -> dict[tuple, dict[str, Any]]:
    """The month's usage per invoice line key: its sum of amounts (`a`) and its number of records (`n`)."""
    rows = month_usage(period).values(*LINE_KEY).annotate(a=Sum("amount"), n=Count("id")).order_by(*LINE_KEY)
    return {tuple(row[k] for k in LINE_KEY): row for row in rows}


def _check_lines(
    result: Reconciliation, period: Period, groups: dict[tuple, dict[str, Any]], invoices: dict[int, Invoice]
) -> set[tuple]:
    """Each finalised line against the usage records behind it; returns the keys of the lines seen."""
    lines = (
        InvoiceLine.objects.filter(invoice__period=period.label, lease__isnull=False)  # storage: storage.py
        .exclude(invoice__state=Invoice.State.DRAFT)
        .values("id", "invoice_id", "lease_id", "plan", "unit_price", "amount")
        .order_by("id")
    )
    seen: set[tuple] = set()
    for line in lines:
        invoice = invoices[line["invoice_id"]]
        key = (invoice.organization_id, invoice.currency, line["lease_id"], line["plan"], line["unit_price"])
        seen.add(key)
        group = groups.get(key)
        what = f"Line {line['id']} of {invoice} (lease {line['lease_id']}, {line['plan']})"
        ids = {"invoices": [invoice.number], "invoice_lines": [line["id"]], "leases": [line["lease_id"]]}
        if group is None:
            message = f"{what} has no usage record of {period.label} behind it."
            result.add("line_without_usage", message, invoice.currency, **ids)
            continue
        expected = rating.to_money(group["a"])
        if expected != line["amount"]:
            message = (
                f"{what} is {line['amount']} {invoice.currency}; its {group['n']} usage records come to {expected}."
            )
            result.add("line_amount", message, invoice.currency, **ids)
    return seen


def _check_not_invoiced(result: Reconciliation, period: Period, missing: dict[tuple, dict[str, Any]]) -> None:
    usage = month_usage(period)
    for key, group in missing.items():
        org_id, currency, lease_id, plan, unit_price = key
        records = usage.filter(organization_id=org_id, currency=currency, lease_id=lease_id, plan=plan)
        records = records.filter(unit_price=unit_price)
        result.add(
            "usage_not_invoiced",
            f"{group['n']} usage records of lease {lease_id} ({plan} at {unit_price} {currency}, "
            f"{rating.to_money(group['a'])} {currency}) of organisation {org_id} are on no invoice line.",
            currency,
            usage_records=first_ids(records),
            leases=[lease_id],
            organizations=[org_id],
        )
