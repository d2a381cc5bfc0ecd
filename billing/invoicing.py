"""Closing a month: one invoice per customer organisation and currency, one statement per provider and currency.

`close_period("YYYY-MM")` (refused until the month is over in the platform time zone) meters up to the month's
end, then for each customer organisation builds the lines (per lease, plan and unit price; amounts rounded once,
half-up, on the line), SLA credits, tax and total, and finalises the invoice with the next gap-free number. It works
on the whole month at once (issue 18): the month's records are summed per line in one query per kind, and invoices
are made in batches, one transaction each (the drafts in one INSERT, their lines in one COPY, a range of numbers
and one UPDATE that finalises them). Running it again, or after a crash part-way, makes only what is missing: the
database allows one invoice per (organisation, month, currency) and one statement per (provider, month,
currency). Then provider statements, in one INSERT: gross from their cards' usage and the storage on their servers,
commission, SLA credits charged back, net.

Storage (issue 16) has lines of its own, one per volume and price per GB-month ("Storage, volume data (100 GB)"),
from the month's storage records; SLA credits never apply to them (a volume's disk is held whether or not the
server answers: its data is kept).
Data-access sessions (no cards, per hour) have lines of their own too, one per session and price per hour, from
the month's data-access records, never credited for SLA either; their provider earns them like storage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from accounts.errors import Conflict, InvalidInput, InvalidTransition
from accounts.inputs import EARLIEST, LATEST
from accounts.models import Organization
from accounts.tenancy import platform_work
from billing import rating
from billing.access import invoices_visible
from billing.display import INVOICE_LINE_LABELS
from billing.metering import meter
from billing.models import (
    DATA_ACCESS,
    STORAGE,
    BalanceEntry,
    CreditNote,
    DataAccessRecord,
    DocumentCounter,
    Invoice,
    InvoiceLine,
    PeriodClose,
    ProviderStatement,
    ProviderTerms,
    StorageRecord,
    UsageRecord,
)
from billing.terms import terms_of
from scheduler.models import Lease
from workloads.models import Volume

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "billing closes periods and settles every tenant's invoices and statements"

PERIOD = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")  # ASCII digits: \d would take "２０２６" too


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime
    end: datetime


def period_of(label: str) -> Period:
    """'2026-05' -> the month's bounds in the platform time zone, as UTC instants. Bad input is a 400, and so is
    a month outside the platform's calendar (accounts.inputs: 0001-01 or 9999-12 would overflow the bounds)."""
    match = PERIOD.fullmatch(label or "")
    if not match:
        raise InvalidInput("A period is YYYY-MM.", fields={"period": ["Use YYYY-MM, e.g. 2026-05."]})
    if not EARLIEST.year <= int(match[1]) < LATEST.year:
        message = f"A period from {EARLIEST.year}-01 to {LATEST.year - 1}-12."
        raise InvalidInput(message, fields={"period": [message]})
    zone = rating.platform_zone()
    local = datetime(int(match[1]), int(match[2]), 15, tzinfo=zone)
    start, end = rating.month_bounds(local, zone)
    return Period(label=label, start=start, end=end)


def period_containing(at: datetime) -> Period:
    local = at.astimezone(rating.platform_zone())
    return period_of(f"{local.year:04d}-{local.month:02d}")


def previous_period(at: datetime) -> Period:
    """The month before the one holding `at`: the last one that is over."""
    return period_containing(period_containing(at).start - timedelta(seconds=1))


def next_number(series: str) -> str:
    """The next number of `series` ('INV', 'CN'); call inside the transaction that issues the document."""
    DocumentCounter.objects.get_or_create(series=series)
    counter = DocumentCounter.objects.select_for_update().get(series=series)
    counter.last += 1
    counter.save(update_fields=["last"])
    return f"{series}-{counter.last:06d}"


# --- invoices ----------------------------------------------------------------------------------------------


def _sla_credit(amount: Decimal, seconds: Decimal, down: Decimal) -> Decimal:
    """SLA_CREDIT_RATE of the line when more than 1 - SLA_TARGET of its card time was down."""
    if seconds <= 0 or down / seconds <= 1 - settings.SUANLI_SLA_TARGET:
        return Decimal(0)
    return rating.to_money(amount * settings.SUANLI_SLA_CREDIT_RATE)


def line_amounts(row: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """An invoice line's amount (rounded once) and SLA credit, from its summed usage: `a` (exact amount), `s`
    (seconds) and `d` (down seconds). The balance's month to date (billing/balances.py) rounds the same way."""
    amount = rating.to_money(row["a"])
    return amount, _sla_credit(amount, row["s"], row["d"])


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal
    credits: Decimal
    tax_rate: Decimal
    tax: Decimal
    total: Decimal

    def __iter__(self):
        return iter((self.subtotal, self.credits, self.tax_rate, self.tax, self.total))


def totals(lines: list[tuple[Decimal, Decimal]]) -> Totals:
    """An invoice's sums from its lines' (amount, SLA credit): subtotal, credits, tax on what is left, total."""
    subtotal = sum((amount for amount, _ in lines), Decimal(0))
    credits = sum((credit for _, credit in lines), Decimal(0))
    tax_rate = settings.SUANLI_TAX_RATE
    tax = rating.to_money((subtotal - credits) * tax_rate)
    return Totals(subtotal, credits, tax_rate, tax, subtotal - credits + tax)


STORAGE_UNIT = "GB-month"


def storage_description(volume: Volume) -> str:
    """A storage line's description (stored in English, like a lease line's)."""
    return f"Storage, volume {volume.name} ({volume.size_gb} GB)"


ACCESS_UNIT = "hour"


def access_description(session_id: int, server_id: int) -> str:
    """A data-access line's description (stored in English, like a lease's)."""
    return f"Data access without cards, session {session_id} (server {server_id})"


# Invoices made per transaction: each batch takes one INSERT of its invoices, one COPY of their lines, one number
# range and one UPDATE that finalises them, instead of about ten round trips an invoice.
INVOICE_BATCH = 100

Key = tuple[int, str]  # (organisation, currency)


@dataclass
class MonthRows:
    """A customer's month in one currency, summed as its invoice lines are: `usage` per lease, plan and unit price
    (`q` quantity, `s` seconds, `d` down seconds, `a` exact amount), `storage` per volume and price per GB-month,
    `access` per data-access session and price per hour."""

    usage: list[dict] = field(default_factory=list)
    storage: list[dict] = field(default_factory=list)
    access: list[dict] = field(default_factory=list)


def month_rows(period: Period, *, org_id: int | None = None, currency: str | None = None) -> dict[Key, MonthRows]:
    """The month's records summed per invoice line, for every customer and currency (or one), in three queries:
    (organisation, currency) -> its rows, in the order of its lines."""
    filters: dict[str, Any] = {"slot_start__gte": period.start, "slot_start__lt": period.end}
    if org_id is not None:
        filters.update(organization_id=org_id, currency=currency)
    rows: dict[Key, MonthRows] = defaultdict(MonthRows)
    usage = (
        UsageRecord.objects.filter(**filters)
        .values("organization_id", "currency", "lease_id", "plan", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), d=Sum("down_seconds"), a=Sum("amount"))
        .order_by("organization_id", "currency", "lease_id", "plan", "unit_price")
    )
    for row in usage:
        rows[(row["organization_id"], row["currency"])].usage.append(row)
    storage = (
        StorageRecord.objects.filter(**filters)
        .values("organization_id", "currency", "volume_id", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), a=Sum("amount"))
        .order_by("organization_id", "currency", "volume_id", "unit_price")
    )
    for row in storage:
        rows[(row["organization_id"], row["currency"])].storage.append(row)
    access = (
        DataAccessRecord.objects.filter(**filters)
        .values("organization_id", "currency", "data_access_id", "server_id", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), a=Sum("amount"))
        .order_by("organization_id", "currency", "data_access_id", "unit_price")
    )
    for row in access:
        rows[(row["organization_id"], row["currency"])].access.append(row)
    return dict(rows)


_LINE_COLUMNS = (
    "invoice_id",
    "lease_id",
    "volume_id",
    "data_access_id",
    "plan",
    "description",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "exact_amount",
    "seconds",
    "down_seconds",
    "sla_credit",
)


def invoice_lines(invoice_id: int, rows: MonthRows, volumes: dict[int, Volume]) -> list[dict[str, Any]]:
    """An invoice's lines (column -> value), each rounded once: a lease's per plan and unit price with its SLA
    credit, then a volume's storage per price, then a data-access session's hours per price (no SLA credit)."""
    lines = []
    for row in rows.usage:
        amount, sla_credit = line_amounts(row)
        lines.append(
            {
                "invoice_id": invoice_id,
                "lease_id": row["lease_id"],
                "plan": row["plan"],
                "description": f"{INVOICE_LINE_LABELS[row['plan']]}, lease {row['lease_id']}",
                "quantity": row["q"].quantize(Decimal("0.000001")),
                "unit": rating.UNIT_NAMES[row["plan"]],
                "unit_price": row["unit_price"],
                "amount": amount,
                "exact_amount": row["a"],
                "seconds": row["s"],
                "down_seconds": row["d"],
                "sla_credit": sla_credit,
            }
        )
    for row in rows.storage:
        lines.append(
            {
                "invoice_id": invoice_id,
                "volume_id": row["volume_id"],
                "plan": STORAGE,
                "description": storage_description(volumes[row["volume_id"]]),
                "quantity": row["q"].quantize(Decimal("0.000001")),
                "unit": STORAGE_UNIT,
                "unit_price": row["unit_price"],
                "amount": rating.to_money(row["a"]),
                "exact_amount": row["a"],
                "seconds": row["s"],
                "down_seconds": Decimal(0),
                "sla_credit": Decimal(0),
            }
        )
    for row in rows.access:
        lines.append(
            {
                "invoice_id": invoice_id,
                "data_access_id": row["data_access_id"],
                "plan": DATA_ACCESS,
                "description": access_description(row["data_access_id"], row["server_id"]),
                "quantity": row["q"].quantize(Decimal("0.000001")),
                "unit": ACCESS_UNIT,
                "unit_price": row["unit_price"],
                "amount": rating.to_money(row["a"]),
                "exact_amount": row["a"],
                "seconds": row["s"],
                "down_seconds": Decimal(0),
                "sla_credit": Decimal(0),
            }
        )
    return lines


def invoices_build(*, period: Period, rows: dict[Key, MonthRows], now: datetime) -> list[Invoice]:
    """Make and finalise the invoices of `rows` (organisation and currency -> the month's rows) for `period`, but
    none that exists already or would have no line; in batches of INVOICE_BATCH, one transaction each, numbered in
    the order of (organisation, currency). Returns the invoices made (another closer's are skipped)."""
    existing = set(Invoice.objects.filter(period=period.label).values_list("organization_id", "currency"))
    keys = [
        key
        for key in sorted(rows)
        if key not in existing and (rows[key].usage or rows[key].storage or rows[key].access)
    ]
    made: list[Invoice] = []
    for start in range(0, len(keys), INVOICE_BATCH):
        made += _invoice_batch(period, keys[start : start + INVOICE_BATCH], rows, now)
    return made


_INVOICES_INSERT = """
INSERT INTO billing_invoice (organization_id, period, currency, number, state, subtotal, credits, tax_rate, tax, total,
                             overdue, refunded, created_at)
SELECT k.organization_id, %(period)s, k.currency, '', 'draft', 0, 0, 0, 0, 0, false, 0, %(created_at)s
FROM unnest(%(orgs)s::bigint[], %(currencies)s::text[]) WITH ORDINALITY AS k(organization_id, currency, n)
ORDER BY k.n
ON CONFLICT (organization_id, period, currency) DO NOTHING
RETURNING id, organization_id, currency
"""

_NUMBERS_TAKE = """
INSERT INTO billing_documentcounter (series, last) VALUES (%(series)s, %(count)s)
ON CONFLICT (series) DO UPDATE SET last = billing_documentcounter.last + excluded.last
RETURNING last
"""

_INVOICES_FINALISE = """
UPDATE billing_invoice AS i
SET number = v.number, state = v.state, subtotal = v.subtotal, credits = v.credits, tax_rate = v.tax_rate,
    tax = v.tax, total = v.total, issued_at = %(issued_at)s, due_at = %(due_at)s, paid_at = v.paid_at
FROM unnest(%(ids)s::bigint[], %(numbers)s::text[], %(states)s::text[], %(subtotals)s::numeric[],
            %(credits)s::numeric[], %(tax_rates)s::numeric[], %(taxes)s::numeric[], %(totals)s::numeric[],
            %(paid_at)s::timestamptz[])
    AS v(id, number, state, subtotal, credits, tax_rate, tax, total, paid_at)
WHERE i.id = v.id AND i.state = 'draft'
"""


def _invoice_batch(period: Period, keys: list[Key], rows: dict[Key, MonthRows], now: datetime) -> list[Invoice]:
    """One transaction: the batch's invoices inserted as drafts (those another closer made are skipped), their lines
    copied in (a draft's lines may be written: migration 0002), the next numbers of the INV series taken at once
    (its counter row stays locked until the commit, so numbers stay gap-free), and the invoices finalised."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _INVOICES_INSERT,
            {
                "period": period.label,
                "orgs": [org_id for org_id, _ in keys],
                "currencies": [currency for _, currency in keys],
                "created_at": timezone.now(),
            },
        )
        ids = {(org_id, currency): pk for pk, org_id, currency in cursor.fetchall()}
        keys = [key for key in keys if key in ids]  # in order; the others were made by another closer
        if not keys:
            return []
        volume_ids = {row["volume_id"] for key in keys for row in rows[key].storage}
        volumes = Volume.objects.unscoped("the invoices' own volumes").in_bulk(volume_ids) if volume_ids else {}
        sums: dict[Key, Totals] = {}
        with cursor.copy(f"COPY billing_invoiceline ({', '.join(_LINE_COLUMNS)}) FROM STDIN") as copy:
            for key in keys:
                lines = invoice_lines(ids[key], rows[key], volumes)
                for line in lines:
                    copy.write_row([line.get(column) for column in _LINE_COLUMNS])
                sums[key] = totals([(line["amount"], line["sla_credit"]) for line in lines])
        cursor.execute(_NUMBERS_TAKE, {"series": "INV", "count": len(keys)})
        first = cursor.fetchone()[0] - len(keys) + 1
        cursor.execute(
            _INVOICES_FINALISE,
            {
                "ids": [ids[key] for key in keys],
                "numbers": [f"INV-{first + n:06d}" for n in range(len(keys))],
                "states": [Invoice.State.OPEN if sums[key].total > 0 else Invoice.State.PAID for key in keys],
                "subtotals": [sums[key].subtotal for key in keys],
                "credits": [sums[key].credits for key in keys],
                "tax_rates": [sums[key].tax_rate for key in keys],
                "taxes": [sums[key].tax for key in keys],
                "totals": [sums[key].total for key in keys],
                "paid_at": [None if sums[key].total > 0 else now for key in keys],
                "issued_at": now,
                "due_at": now + timedelta(days=settings.SUANLI_INVOICE_DUE_DAYS),
            },
        )
    made = Invoice.objects.in_bulk([ids[key] for key in keys])
    return [made[ids[key]] for key in keys]


def invoice_build(*, org_id: int, currency: str, period: Period, now: datetime) -> Invoice | None:
    """Make and finalise the invoice of `org_id` for `period` in `currency`, unless it exists or would have no
    line (None then)."""
    made = invoices_build(period=period, rows=month_rows(period, org_id=org_id, currency=currency), now=now)
    return made[0] if made else None


@platform_work(_PLATFORM)
def close_period(label: str, *, now: datetime | None = None) -> dict[str, int]:
    """Finalise the invoices and provider statements of a month that is over. Idempotent; resumable."""
    now = now or timezone.now()
    period = period_of(label)
    if now < period.end:
        raise Conflict(f"{label} is not over yet (it ends {period.end.isoformat()}).", code="period_open")
    meter(until=period.end)
    rows = month_rows(period)
    invoices = len(invoices_build(period=period, rows=rows, now=now))
    # A prepaid customer's open invoices are paid from its balance, oldest first; after the invoices, so that a
    # close that stopped between making an invoice and settling it settles it when run again.
    for org_id in settlement_candidates(sorted({org_id for org_id, _ in rows})):
        invoices_settle_from_balance(org=Organization.objects.get(pk=org_id), now=now)
    statements = statements_build(period=period)
    _period_closed(label, now=now)
    return {"invoices": invoices, "statements": statements}


_SETTLEABLE = """
WITH oldest AS (
    SELECT DISTINCT ON (i.organization_id) i.organization_id, i.currency,
           i.total - coalesce((SELECT sum(c.amount) FROM billing_creditnote c WHERE c.invoice_id = i.id), 0) AS due
    FROM billing_invoice i
    WHERE i.organization_id = ANY(%(orgs)s) AND i.state = 'open'
    ORDER BY i.organization_id, i.issued_at, i.id
)
SELECT o.organization_id
FROM oldest o
WHERE coalesce(
          (SELECT t.mode FROM billing_billingterms t WHERE t.organization_id = o.organization_id
           ORDER BY t.id DESC LIMIT 1),
          %(default_mode)s
      ) = 'prepaid'
  AND o.due > 0
  AND o.due <= coalesce(
          (SELECT sum(b.amount) FROM billing_balanceentry b
           WHERE b.organization_id = o.organization_id AND b.currency = o.currency), 0)
ORDER BY o.organization_id
"""


def settlement_candidates(org_ids: list[int]) -> list[int]:
    """Of `org_ids`, those `invoices_settle_from_balance` would settle something of, in one query: prepaid (terms_of),
    and the balance covers what their oldest open invoice asks. The others would settle nothing (it stops at the first
    invoice it cannot cover); each candidate is then settled by it, under its locks, which decide."""
    if not org_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_SETTLEABLE, {"orgs": org_ids, "default_mode": settings.SUANLI_DEFAULT_PAYMENT_MODE})
        return [org_id for (org_id,) in cursor.fetchall()]


def _period_closed(label: str, *, now: datetime) -> None:
    """Record that `label` is closed, with how many finalised invoices and statements it has now (the closed-months
    list reads this, so a month that billed nobody is listed too). Idempotent: a second close updates the row."""
    PeriodClose.objects.update_or_create(
        period=label,
        defaults={
            "closed_at": now,
            "invoices": Invoice.objects.filter(period=label).exclude(state=Invoice.State.DRAFT).count(),
            "statements": ProviderStatement.objects.filter(period=label).count(),
        },
    )


@platform_work(_PLATFORM)
def invoice_settle_from_balance(*, invoice: Invoice, now: datetime | None = None) -> bool:
    """Pay an open invoice from its organisation's balance, if the balance covers what it asks (its total less
    credit notes): a `settlement` entry takes the amount off the balance and the invoice is paid. An invoice the
    balance cannot cover stays open (a top-up settles it later, or it is paid like any other). Once per invoice
    (the database allows one settlement of it); locks the invoice row, then the organisation's (the order of
    billing/payments.py; every writer of the balance locks the organisation). Returns whether it settled."""
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        Organization.objects.select_for_update().filter(pk=invoice.organization_id).first()
        due = invoice.amount_due()
        if invoice.state != Invoice.State.OPEN or due <= 0:
            return False
        balance = BalanceEntry.objects.filter(
            organization_id=invoice.organization_id, currency=invoice.currency
        ).aggregate(t=Sum("amount"))["t"] or Decimal(0)
        if balance < due:
            return False
        BalanceEntry.objects.create(
            organization_id=invoice.organization_id,
            kind=BalanceEntry.Kind.SETTLEMENT,
            amount=-due,
            currency=invoice.currency,
            key=f"settlement:invoice:{invoice.pk}",
            reference=invoice.number,
            invoice=invoice,
            created_at=now,
        )
        Invoice.objects.filter(pk=invoice.pk).update(state=Invoice.State.PAID, paid_at=now, overdue=False)
    billing_hold_release(org_id=invoice.organization_id)
    return True


@platform_work(_PLATFORM)
def invoices_settle_from_balance(*, org: Organization, now: datetime | None = None) -> int:
    """Settle a prepaid organisation's open invoices from its balance, oldest first, while it covers them (a
    postpaid organisation's are paid like any invoice). Returns how many were settled."""
    if not terms_of(org).prepaid:
        return 0
    settled = 0
    for invoice in Invoice.objects.for_org(org).filter(state=Invoice.State.OPEN).order_by("issued_at", "id"):
        if not invoice_settle_from_balance(invoice=invoice, now=now):
            break
        settled += 1
    return settled


def close_last_period(*, now: datetime | None = None) -> dict[str, int]:
    """The beat job: close the month before the current one (a no-op once it is closed)."""
    now = now or timezone.now()
    return close_period(previous_period(now).label, now=now)


def closed_periods(*, most: int = 12) -> list[dict[str, Any]]:
    """The last `most` months that were closed (`PeriodClose`) or have finalised invoices or provider statements,
    with how many of each (staff)."""
    invoices = dict(
        Invoice.objects.exclude(state=Invoice.State.DRAFT)
        .values("period")
        .annotate(n=Count("id"))
        .values_list("period", "n")
    )
    statements = dict(ProviderStatement.objects.values("period").annotate(n=Count("id")).values_list("period", "n"))
    closed = set(PeriodClose.objects.values_list("period", flat=True))
    periods = sorted(closed | set(invoices) | set(statements), reverse=True)[:most]
    return [{"period": p, "invoices": invoices.get(p, 0), "statements": statements.get(p, 0)} for p in periods]


def invoice_void(*, invoice: Invoice) -> Invoice:
    """Void an open invoice (a mistake; the customer owes nothing of it). Paid invoices are corrected by credit
    notes instead."""
    if not Invoice.objects.filter(pk=invoice.pk, state=Invoice.State.OPEN).update(state=Invoice.State.VOID):
        raise InvalidTransition(f"A {invoice.state} invoice cannot be voided.")
    invoice.refresh_from_db()
    return invoice


def credit_note_issue(
    *, invoice: Invoice, amount: Decimal, reason: str, lease: Lease | None = None, by=None
) -> CreditNote:
    """Give money back on a finalised invoice; at most what is left of its total. Numbered like invoices.

    On an invoice settled from the balance the credit goes back to the balance (a `credit_note` entry); on an open
    invoice it lowers what is due. Either way a prepaid organisation's balance then settles the open invoices it
    covers (oldest first)."""
    amount = rating.to_money(amount)
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        # The invoice, then the organisation: the order of invoice_settle_from_balance (and of the balance's writers).
        Organization.objects.select_for_update().filter(pk=invoice.organization_id).first()
        if invoice.state not in (Invoice.State.OPEN, Invoice.State.PAID):
            raise InvalidTransition(f"A {invoice.state} invoice takes no credit note.")
        credited = invoice.credit_notes.aggregate(t=Sum("amount"))["t"] or Decimal(0)
        if amount <= 0 or amount > invoice.total - credited:
            left = invoice.total - credited
            raise InvalidInput(f"Between 0.01 and {left}.", fields={"amount": [f"Between 0.01 and {left}."]})
        if lease is not None and not InvoiceLine.objects.filter(invoice=invoice, lease=lease).exists():
            raise InvalidInput("That lease is not on this invoice.", fields={"lease": ["Not on this invoice."]})
        note = CreditNote.objects.create(
            invoice=invoice,
            organization_id=invoice.organization_id,
            number=next_number("CN"),
            amount=amount,
            currency=invoice.currency,
            reason=reason[:300],
            lease=lease,
            created_by=by,
        )
        settled = BalanceEntry.objects.filter(invoice=invoice, kind=BalanceEntry.Kind.SETTLEMENT).first()
        if settled is not None:
            # The invoice was paid from the balance: the credit goes back to it.
            BalanceEntry.objects.create(
                organization_id=invoice.organization_id,
                kind=BalanceEntry.Kind.CREDIT_NOTE,
                amount=amount,
                currency=invoice.currency,
                key=f"credit_note:{note.pk}",
                reference=note.number,
                reason=note.reason,
                invoice=invoice,
                credit_note=note,
                created_by=by,
                created_at=timezone.now(),
            )
        if invoice.state == Invoice.State.OPEN and invoice.amount_due() <= 0:
            # Credited in full: nothing is left to pay.
            Invoice.objects.filter(pk=invoice.pk).update(
                state=Invoice.State.PAID, paid_at=timezone.now(), overdue=False
            )
            billing_hold_release(org_id=invoice.organization_id)
    # What is left due, or the credit back on the balance, may now be covered: settle what the balance covers.
    invoices_settle_from_balance(org=invoice.organization)
    return note


def invoices_mark_overdue(*, now: datetime | None = None) -> int:
    """Open invoices past their due date become overdue; with SUANLI_OVERDUE_BLOCKS_LEASES their organisation
    is put on billing hold (no new leases) until it has paid. Idempotent."""
    now = now or timezone.now()
    with transaction.atomic():
        marked = Invoice.objects.filter(state=Invoice.State.OPEN, overdue=False, due_at__lt=now).update(overdue=True)
        if settings.SUANLI_OVERDUE_BLOCKS_LEASES:
            overdue_orgs = Invoice.objects.filter(state=Invoice.State.OPEN, overdue=True).values("organization_id")
            Organization.objects.filter(pk__in=overdue_orgs, billing_hold=False).update(billing_hold=True)
    return marked


@platform_work(_PLATFORM)
def billing_hold_release(*, org_id: int) -> bool:
    """Lift the hold of an organisation that has no overdue open invoice left. The organisation row is locked
    first, so a concurrent `invoices_mark_overdue` cannot put a hold on that this then lifts."""
    with transaction.atomic():
        org = Organization.objects.select_for_update().filter(pk=org_id, billing_hold=True).first()
        if org is None:
            return False
        if Invoice.objects.filter(organization_id=org_id, state=Invoice.State.OPEN, overdue=True).exists():
            return False
        return bool(Organization.objects.filter(pk=org_id).update(billing_hold=False))


# --- provider statements -------------------------------------------------------------------------------------


def _split(total: Decimal, weights: dict[int, Decimal]) -> dict[int, Decimal]:
    """`total` (cents) shared by `weights`, largest remainder first, so the parts sum to it exactly."""
    whole = sum(weights.values())
    if not whole or not total:
        return dict.fromkeys(weights, Decimal(0))
    cents = int(total * 100)
    raw = {k: Decimal(cents) * w / whole for k, w in weights.items()}
    parts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (raw[k] - parts[k], -k), reverse=True)[: cents - sum(parts.values())]:
        parts[k] += 1
    return {k: Decimal(v) / 100 for k, v in parts.items()}


def chargebacks(period: Period) -> dict[tuple[int, str], Decimal]:
    """SLA credits of the month's invoice lines and credit notes issued in the month that name a lease, shared
    among the providers whose cards the lease used, by their part of its usage in the credited invoice's month:
    (provider, currency) -> amount."""
    owed: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    credits: list[tuple[int, Decimal, str, str]] = list(
        InvoiceLine.objects.filter(invoice__period=period.label, sla_credit__gt=0).values_list(
            "lease_id", "sla_credit", "invoice__currency", "invoice__period"
        )
    )
    credits += list(
        CreditNote.objects.filter(
            created_at__gte=period.start, created_at__lt=period.end, lease__isnull=False
        ).values_list("lease_id", "amount", "currency", "invoice__period")
    )
    # Each credited lease's usage per provider in the credited month: one query per month credited.
    shares: dict[tuple[int, str], dict[int, Decimal]] = defaultdict(dict)
    leases_of: dict[str, set[int]] = defaultdict(set)
    for lease_id, _credit, _currency, label in credits:
        leases_of[label].add(lease_id)
    for label, lease_ids in leases_of.items():
        month = period_of(label)
        for lease_id, provider_id, part in (
            UsageRecord.objects.filter(lease_id__in=lease_ids, slot_start__gte=month.start, slot_start__lt=month.end)
            .values("lease_id", "provider_id")
            .annotate(a=Sum("amount"))
            .values_list("lease_id", "provider_id", "a")
        ):
            shares[(lease_id, label)][provider_id] = part
    for lease_id, credit, currency, label in credits:
        for provider_id, part in _split(credit, shares[(lease_id, label)]).items():
            owed[(provider_id, currency)] += part
    return owed


def take_rate_of(provider_id: int) -> Decimal:
    return take_rates_of([provider_id])[provider_id]


def take_rates_of(provider_ids: list[int]) -> dict[int, Decimal]:
    """Each provider's take rate: its own terms' where set, else the platform's."""
    own = dict(
        ProviderTerms.objects.for_orgs(provider_ids)
        .filter(take_rate__isnull=False)
        .values_list("organization_id", "take_rate")
    )
    return {provider_id: own.get(provider_id, settings.SUANLI_TAKE_RATE) for provider_id in provider_ids}


def provider_gross(period: Period) -> dict[tuple[int, str], Decimal]:
    """Each provider's exact earnings of the month per currency, before commission: its cards' usage and the
    storage on its servers. (provider, currency) -> unrounded amount."""
    gross: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    for model in (UsageRecord, StorageRecord, DataAccessRecord):
        rows = (
            model.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)
            .values("provider_id", "currency")
            .annotate(a=Sum("amount"))
            .order_by("provider_id", "currency")
        )
        for row in rows:
            gross[(row["provider_id"], row["currency"])] += row["a"]
    return dict(gross)


_STATEMENTS_INSERT = """
INSERT INTO billing_providerstatement (organization_id, period, currency, gross, take_rate, commission, credits, net,
                                       state, created_at)
SELECT v.organization_id, %(period)s, v.currency, v.gross, v.take_rate, v.commission, v.credits, v.net, 'open',
       %(created_at)s
FROM unnest(%(orgs)s::bigint[], %(currencies)s::text[], %(gross)s::numeric[], %(take_rates)s::numeric[],
            %(commissions)s::numeric[], %(credits)s::numeric[], %(nets)s::numeric[]) WITH ORDINALITY
    AS v(organization_id, currency, gross, take_rate, commission, credits, net, n)
ORDER BY v.n
ON CONFLICT (organization_id, period, currency) DO NOTHING
"""


@platform_work(_PLATFORM)
def statements_build(*, period: Period) -> int:
    """One statement per provider and currency for the month (skipped where it exists), all in one INSERT. Returns
    how many new."""
    owed = chargebacks(period)
    gross_of = provider_gross(period)
    keys = sorted(set(gross_of) | set(owed))
    if not keys:
        return 0
    takes = take_rates_of(sorted({provider_id for provider_id, _ in keys}))
    columns: dict[str, list] = defaultdict(list)
    for key in keys:
        provider_id, currency = key
        gross = rating.to_money(gross_of.get(key, Decimal(0)))
        take = takes[provider_id]
        commission = rating.to_money(gross * take)
        credits = owed.get(key, Decimal(0))
        for name, value in (
            ("orgs", provider_id),
            ("currencies", currency),
            ("gross", gross),
            ("take_rates", take),
            ("commissions", commission),
            ("credits", credits),
            ("nets", gross - commission - credits),
        ):
            columns[name].append(value)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_STATEMENTS_INSERT, {"period": period.label, "created_at": timezone.now(), **columns})
        return cursor.rowcount


def invoices_for(org: Organization | None):
    return invoices_visible(Invoice.objects.for_org(org))
