"""What a reconciliation returns: its totals per currency, counts and mismatches (`Reconciliation`, `Mismatch`),
the mismatches as CSV (`mismatches_csv`), and the few reads the checks share (the month's usage records, whether an
organisation was prepaid at a time)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import F, OuterRef, QuerySet, Subquery

from billing.invoicing import Period
from billing.models import BillingTerms, Invoice, Payment, PaymentMode, UsageRecord

MAX_IDS = 100
ZERO = Decimal(0)
RECEIVED = (Payment.State.SUCCEEDED, Payment.State.REFUNDED)
TOTAL_FIELDS = (
    "metered",
    "invoiced_subtotal",
    "sla_credits",
    "invoiced",
    "tax",
    "invoiced_total",
    "paid",
    "open",
    "void",
    "draft",
    "payments_received",
    "refunded",
    "credit_notes",
    "provider_gross",
    "commission",
    "provider_credits",
    "provider_net",
    "paid_out",
    "settled_from_balance",
)
# The balance ledger's movements in the month (signed, as in the ledger) and their sum: ledger.py.
LEDGER_FIELDS = (
    "ledger_top_ups",
    "ledger_refunds",
    "ledger_disputes",
    "ledger_disputes_won",
    "ledger_bank_transfers",
    "ledger_adjustments",
    "ledger_settlements",
    "ledger_credit_notes",
    "ledger_net",
)
# Resale (issue 20, resale.py): what renters were charged for resold cards, the commission on it, the resellers' net,
# and the cost of the contracts that back resale offers.
RESALE_FIELDS = ("resale_revenue", "resale_commission", "resale_net", "contract_cost")
CSV_COLUMNS = ["period", "kind", "currency", "message", "objects"]


@dataclass
class Mismatch:
    kind: str
    message: str
    currency: str = ""
    objects: dict[str, list[Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "currency": self.currency, "objects": self.objects}

    def objects_text(self) -> str:
        return "; ".join(f"{name}={','.join(str(v) for v in values)}" for name, values in self.objects.items())


@dataclass
class Reconciliation:
    period: str
    totals: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stripe: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    checked_at: datetime | None = None
    # Per reseller and currency (resale.py): resold card-seconds, revenue, take rate, commission, net, contract cost,
    # margin.
    resale: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def total(self, currency: str) -> dict[str, Decimal]:
        return self.totals.setdefault(currency, dict.fromkeys(TOTAL_FIELDS + LEDGER_FIELDS + RESALE_FIELDS, ZERO))

    def add(self, kind: str, message: str, currency: str = "", **objects: list[Any]) -> None:
        cut = {name: list(values)[:MAX_IDS] for name, values in objects.items() if values}
        self.mismatches.append(Mismatch(kind=kind, message=message, currency=currency, objects=cut))

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "ok": self.ok,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "totals": {cur: {k: str(v) for k, v in t.items()} for cur, t in sorted(self.totals.items())},
            "counts": self.counts,
            "stripe": self.stripe,
            "mismatches": [m.as_dict() for m in self.mismatches],
            "resale": [{k: v if isinstance(v, int) else str(v) for k, v in row.items()} for row in self.resale],
        }


def month_usage(period: Period) -> QuerySet[UsageRecord]:
    return UsageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)


def prepaid_when(org_id: int, when: datetime | None) -> bool:
    """Whether the organisation was prepaid at `when` (the BillingTerms row then in force, else the site default;
    billing/terms.py reads the latest alike)."""
    rows = BillingTerms.objects.filter(organization_id=org_id).order_by("-id")
    row = (rows.filter(created_at__lte=when) if when else rows).first()
    mode = row.mode if row is not None else settings.SUANLI_DEFAULT_PAYMENT_MODE
    return mode == PaymentMode.PREPAID


def records_after_close(
    result: Reconciliation, period: Period, records: QuerySet, *, code: str, noun: str, ids_key: str
) -> None:
    """Add a `code` mismatch per invoice of `period` for the `records` (usage or storage, of that month) written
    after that invoice was issued: they are on no line of it."""
    issued = Invoice.objects.filter(
        organization_id=OuterRef("organization_id"), currency=OuterRef("currency"), period=period.label
    ).exclude(state=Invoice.State.DRAFT)
    late = (
        records.annotate(
            issued_at=Subquery(issued.values("issued_at")[:1]), number=Subquery(issued.values("number")[:1])
        )
        .filter(created_at__gt=F("issued_at"))
        .values_list("id", "number", "currency")
        .order_by("id")
    )
    by_invoice: dict[tuple[str, str], list[int]] = defaultdict(list)
    for record_id, number, currency in late:
        by_invoice[(number, currency)].append(record_id)
    for (number, currency), ids in sorted(by_invoice.items()):
        result.add(
            code,
            f"{len(ids)} {noun} records of {period.label} were written after invoice {number} was issued.",
            currency,
            invoices=[number],
            **{ids_key: ids},
        )


def first_ids(queryset: QuerySet) -> list[int]:
    return list(queryset.order_by("id").values_list("id", flat=True)[:MAX_IDS])


def mismatches_csv(result: Reconciliation) -> str:
    """The mismatches as CSV (one row each; `objects` as `name=id,id; name=...`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for m in result.mismatches:
        writer.writerow([result.period, m.kind, m.currency, m.message, m.objects_text()])
    return out.getvalue()
