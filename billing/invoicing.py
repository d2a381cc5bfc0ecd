"""Closing a month: one invoice per customer organisation and currency, one statement per provider and currency.

`close_period("YYYY-MM")` (refused until the month is over in the platform time zone) meters up to the month's
end, then for each customer organisation builds the lines (per lease, plan and unit price; amounts rounded once,
half-up, on the line), SLA credits, tax and total, and finalises the invoice with the next gap-free number, all in
one transaction per invoice. Running it again, or after a crash part-way, makes only what is missing: the
database allows one invoice per (organisation, month, currency) and one statement per (provider, month,
currency). Then provider statements: gross from their cards' usage and the storage on their servers, commission,
SLA credits charged back, net.

Storage (issue 16) has lines of its own, one per volume and price per GB-month ("Storage, volume data (100 GB)"),
from the month's storage records; SLA credits never apply to them (a volume's disk is held whether or not the
server answers: its data is kept).
Data-access sessions (no cards, per hour) have lines of their own too, one per session and price per hour, from
the month's data-access records, never credited for SLA either; their provider earns them like storage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
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


def _line_rows(org_id: int, currency: str, period: Period) -> list[dict]:
    return list(
        UsageRecord.objects.filter(
            organization_id=org_id, currency=currency, slot_start__gte=period.start, slot_start__lt=period.end
        )
        .values("lease_id", "plan", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), d=Sum("down_seconds"), a=Sum("amount"))
        .order_by("lease_id", "plan", "unit_price")
    )


STORAGE_UNIT = "GB-month"


def storage_description(volume: Volume) -> str:
    """A storage line's description (stored in English, like a lease line's)."""
    return f"Storage, volume {volume.name} ({volume.size_gb} GB)"


def _storage_rows(org_id: int, currency: str, period: Period) -> list[dict]:
    """The month's storage per volume and price per GB-month: `q` GB-months, `s` seconds, `a` exact amount."""
    return list(
        StorageRecord.objects.filter(
            organization_id=org_id, currency=currency, slot_start__gte=period.start, slot_start__lt=period.end
        )
        .values("volume_id", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), a=Sum("amount"))
        .order_by("volume_id", "unit_price")
    )


def storage_lines(invoice: Invoice, rows: list[dict]) -> list[InvoiceLine]:
    """One storage line per volume and price (no SLA credit), rounded once like a lease's line."""
    volumes = Volume.objects.unscoped("the invoice's own volumes").in_bulk({row["volume_id"] for row in rows})
    return [
        InvoiceLine(
            invoice=invoice,
            volume_id=row["volume_id"],
            plan=STORAGE,
            description=storage_description(volumes[row["volume_id"]]),
            quantity=row["q"].quantize(Decimal("0.000001")),
            unit=STORAGE_UNIT,
            unit_price=row["unit_price"],
            amount=rating.to_money(row["a"]),
            exact_amount=row["a"],
            seconds=row["s"],
            down_seconds=Decimal(0),
            sla_credit=Decimal(0),
        )
        for row in rows
    ]


ACCESS_UNIT = "hour"


def access_description(session_id: int, server_id: int) -> str:
    """A data-access line's description (stored in English, like a lease's)."""
    return f"Data access without cards, session {session_id} (server {server_id})"


def _access_rows(org_id: int, currency: str, period: Period) -> list[dict]:
    """The month's data access per session and price per hour: `q` hours, `s` seconds, `a` exact amount."""
    return list(
        DataAccessRecord.objects.filter(
            organization_id=org_id, currency=currency, slot_start__gte=period.start, slot_start__lt=period.end
        )
        .values("data_access_id", "server_id", "unit_price")
        .annotate(q=Sum("quantity"), s=Sum("seconds"), a=Sum("amount"))
        .order_by("data_access_id", "unit_price")
    )


def access_lines(invoice: Invoice, rows: list[dict]) -> list[InvoiceLine]:
    """One data-access line per session and price (no SLA credit), rounded once like a lease's line."""
    return [
        InvoiceLine(
            invoice=invoice,
            data_access_id=row["data_access_id"],
            plan=DATA_ACCESS,
            description=access_description(row["data_access_id"], row["server_id"]),
            quantity=row["q"].quantize(Decimal("0.000001")),
            unit=ACCESS_UNIT,
            unit_price=row["unit_price"],
            amount=rating.to_money(row["a"]),
            exact_amount=row["a"],
            seconds=row["s"],
            down_seconds=Decimal(0),
            sla_credit=Decimal(0),
        )
        for row in rows
    ]


def invoice_build(*, org_id: int, currency: str, period: Period, now: datetime) -> Invoice | None:
    """Make and finalise the invoice of `org_id` for `period` in `currency`, unless it exists (None then)."""
    with transaction.atomic():
        if Invoice.objects.filter(organization_id=org_id, period=period.label, currency=currency).exists():
            return None
        rows = _line_rows(org_id, currency, period)
        storage = _storage_rows(org_id, currency, period)
        accessed = _access_rows(org_id, currency, period)
        if not rows and not storage and not accessed:
            return None
        try:
            with transaction.atomic():
                invoice = Invoice.objects.create(organization_id=org_id, period=period.label, currency=currency)
        except IntegrityError:
            return None  # another closer made it first
        lines = []
        for row in rows:
            amount, sla_credit = line_amounts(row)
            lines.append(
                InvoiceLine(
                    invoice=invoice,
                    lease_id=row["lease_id"],
                    plan=row["plan"],
                    description=f"{INVOICE_LINE_LABELS[row['plan']]}, lease {row['lease_id']}",
                    quantity=row["q"].quantize(Decimal("0.000001")),
                    unit=rating.UNIT_NAMES[row["plan"]],
                    unit_price=row["unit_price"],
                    amount=amount,
                    exact_amount=row["a"],
                    seconds=row["s"],
                    down_seconds=row["d"],
                    sla_credit=sla_credit,
                )
            )
        lines += storage_lines(invoice, storage)
        lines += access_lines(invoice, accessed)
        InvoiceLine.objects.bulk_create(lines)
        sums = totals([(line.amount, line.sla_credit) for line in lines])
        invoice.subtotal, invoice.credits, invoice.tax_rate, invoice.tax, invoice.total = sums
        invoice.number = next_number("INV")
        invoice.issued_at = now
        invoice.due_at = now + timedelta(days=settings.SUANLI_INVOICE_DUE_DAYS)
        invoice.state = Invoice.State.OPEN if sums.total > 0 else Invoice.State.PAID
        invoice.paid_at = None if sums.total > 0 else now
        invoice.save()
    return invoice


@platform_work(_PLATFORM)
def close_period(label: str, *, now: datetime | None = None) -> dict[str, int]:
    """Finalise the invoices and provider statements of a month that is over. Idempotent; resumable."""
    now = now or timezone.now()
    period = period_of(label)
    if now < period.end:
        raise Conflict(f"{label} is not over yet (it ends {period.end.isoformat()}).", code="period_open")
    meter(until=period.end)
    customers = sorted(
        {
            *UsageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)
            .values_list("organization_id", "currency")
            .distinct(),
            *StorageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)
            .values_list("organization_id", "currency")
            .distinct(),
            *DataAccessRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)
            .values_list("organization_id", "currency")
            .distinct(),
        }
    )
    invoices = 0
    for org_id, currency in customers:
        invoice = invoice_build(org_id=org_id, currency=currency, period=period, now=now)
        invoices += invoice is not None
    # A prepaid customer's open invoices are paid from its balance, oldest first; after the loop, so that a close
    # that stopped between making an invoice and settling it settles it when run again.
    for org_id in sorted({org_id for org_id, _ in customers}):
        invoices_settle_from_balance(org=Organization.objects.get(pk=org_id), now=now)
    statements = statements_build(period=period)
    _period_closed(label, now=now)
    return {"invoices": invoices, "statements": statements}


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
    for lease_id, credit, currency, label in credits:
        month = period_of(label)
        shares = dict(
            UsageRecord.objects.filter(lease_id=lease_id, slot_start__gte=month.start, slot_start__lt=month.end)
            .values("provider_id")
            .annotate(a=Sum("amount"))
            .values_list("provider_id", "a")
        )
        for provider_id, part in _split(credit, shares).items():
            owed[(provider_id, currency)] += part
    return owed


def take_rate_of(provider_id: int) -> Decimal:
    terms = ProviderTerms.objects.for_orgs([provider_id]).filter(take_rate__isnull=False).first()
    return terms.take_rate if terms else settings.SUANLI_TAKE_RATE


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


@platform_work(_PLATFORM)
def statements_build(*, period: Period) -> int:
    """One statement per provider and currency for the month (skipped where it exists). Returns how many new."""
    owed = chargebacks(period)
    made = 0
    keys = provider_gross(period)
    for key in sorted(set(keys) | set(owed)):
        provider_id, currency = key
        gross = rating.to_money(keys.get(key, Decimal(0)))
        take = take_rate_of(provider_id)
        commission = rating.to_money(gross * take)
        credits = owed.get(key, Decimal(0))
        try:
            with transaction.atomic():
                ProviderStatement.objects.create(
                    organization_id=provider_id,
                    period=period.label,
                    currency=currency,
                    gross=gross,
                    take_rate=take,
                    commission=commission,
                    credits=credits,
                    net=gross - commission - credits,
                )
                made += 1
        except IntegrityError:
            continue  # already made
    return made


def invoices_for(org: Organization | None):
    return invoices_visible(Invoice.objects.for_org(org))
