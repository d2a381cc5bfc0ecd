"""Reconciling a closed month: metered usage against invoices, payments, provider statements, payouts and Stripe.

`reconcile("YYYY-MM")` reads (it writes nothing) and returns the month's totals per currency and every mismatch,
each with a kind, a message and the objects behind it (ids, invoice numbers). The checks:

(a) metered = invoiced + credited. Every usage record of the month is on the invoice line of its organisation,
    currency, lease, plan and unit price (`usage_not_invoiced`), and none was written after its invoice was issued
    (`usage_after_close`); each line's amount is to_money of the sum of its records' amounts (`line_amount`,
    `line_without_usage`); each invoice's subtotal is the sum of its lines, its credits the sum of their SLA
    credits, its tax the rate of the rest and its total subtotal - credits + tax (`invoice_sums`).
(b) invoiced = paid + open + void, per currency: a month has no draft invoice left (`invoice_draft`); each paid
    invoice with a total is covered by succeeded Stripe payments in its currency (`paid_without_payment`); no open
    or void invoice has taken money (`payment_on_unpaid_invoice`) and none more than its total
    (`invoice_overpaid`).
(c) Providers: each statement's net + commission + credits is its gross (`statement_sums`); its gross is to_money
    of its provider's usage of the month in its currency (`statement_gross`, `usage_without_statement`); its
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

Lists of ids in a mismatch are cut at MAX_IDS (the message gives the full count).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import stripe
from django.db.models import Count, F, OuterRef, Subquery, Sum
from django.utils import timezone

from accounts.errors import Conflict
from accounts.tenancy import platform_work
from billing import rating
from billing import stripe_gateway as gateway
from billing.invoicing import Period, chargebacks, period_of
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    Payment,
    Payout,
    ProviderStatement,
    StripeEvent,
    UsageRecord,
)
from billing.payouts import TransferRefused, transfer_retrieve

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "reconciliation is the staff's report over every tenant's money"

logger = logging.getLogger(__name__)

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
)
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

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def total(self, currency: str) -> dict[str, Decimal]:
        return self.totals.setdefault(currency, dict.fromkeys(TOTAL_FIELDS, ZERO))

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
        }


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
    _usage_and_invoices(result, period)
    _invoice_states_and_payments(result, period)
    _statements_and_payouts(result, period)
    _stripe_payments(result, period, use_api=stripe_api and gateway.configured())
    _stripe_transfers(result, period, use_api=stripe_api and gateway.configured())
    return result


def _month_usage(period: Period):
    return UsageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)


def _ids(queryset) -> list[int]:
    return list(queryset.order_by("id").values_list("id", flat=True)[:MAX_IDS])


# --- (a) usage -> invoice lines -> invoices ------------------------------------------------------------------


def _usage_and_invoices(result: Reconciliation, period: Period) -> None:
    usage = _month_usage(period)
    line_key = ("organization_id", "currency", "lease_id", "plan", "unit_price")
    groups = {
        tuple(row[k] for k in line_key): row
        for row in usage.values(*line_key).annotate(a=Sum("amount"), n=Count("id")).order_by(*line_key)
    }
    result.counts["usage_records"] = sum(row["n"] for row in groups.values())
    for key, row in groups.items():
        result.total(key[1])["metered"] += rating.to_money(row["a"])

    invoices = {
        inv.pk: inv for inv in Invoice.objects.filter(period=period.label).order_by("id").select_related("organization")
    }
    result.counts["invoices"] = len(invoices)
    lines = list(
        InvoiceLine.objects.filter(invoice__period=period.label)
        .exclude(invoice__state=Invoice.State.DRAFT)
        .values("id", "invoice_id", "lease_id", "plan", "unit_price", "amount", "sla_credit")
        .order_by("id")
    )
    seen: set[tuple] = set()
    for line in lines:
        invoice = invoices[line["invoice_id"]]
        key = (invoice.organization_id, invoice.currency, line["lease_id"], line["plan"], line["unit_price"])
        seen.add(key)
        group = groups.get(key)
        if group is None:
            result.add(
                "line_without_usage",
                f"Line {line['id']} of {invoice} (lease {line['lease_id']}, {line['plan']}) has no usage record "
                f"of {period.label} behind it.",
                invoice.currency,
                invoices=[invoice.number],
                invoice_lines=[line["id"]],
                leases=[line["lease_id"]],
            )
            continue
        expected = rating.to_money(group["a"])
        if expected != line["amount"]:
            result.add(
                "line_amount",
                f"Line {line['id']} of {invoice} (lease {line['lease_id']}, {line['plan']}) is {line['amount']} "
                f"{invoice.currency}; its {group['n']} usage records come to {expected}.",
                invoice.currency,
                invoices=[invoice.number],
                invoice_lines=[line["id"]],
                leases=[line["lease_id"]],
            )

    for key, group in groups.items():
        if key in seen:
            continue
        org_id, currency, lease_id, plan, unit_price = key
        records = usage.filter(organization_id=org_id, currency=currency, lease_id=lease_id, plan=plan)
        records = records.filter(unit_price=unit_price)
        result.add(
            "usage_not_invoiced",
            f"{group['n']} usage records of lease {lease_id} ({plan} at {unit_price} {currency}, "
            f"{rating.to_money(group['a'])} {currency}) of organisation {org_id} are on no invoice line.",
            currency,
            usage_records=_ids(records),
            leases=[lease_id],
            organizations=[org_id],
        )

    issued = Invoice.objects.filter(
        organization_id=OuterRef("organization_id"), currency=OuterRef("currency"), period=period.label
    ).exclude(state=Invoice.State.DRAFT)
    late = (
        usage.annotate(issued_at=Subquery(issued.values("issued_at")[:1]), number=Subquery(issued.values("number")[:1]))
        .filter(created_at__gt=F("issued_at"))
        .values_list("id", "number", "currency")
        .order_by("id")
    )
    late_by_invoice: dict[tuple[str, str], list[int]] = defaultdict(list)
    for record_id, number, currency in late:
        late_by_invoice[(number, currency)].append(record_id)
    for (number, currency), ids in sorted(late_by_invoice.items()):
        result.add(
            "usage_after_close",
            f"{len(ids)} usage records of {period.label} were written after invoice {number} was issued.",
            currency,
            invoices=[number],
            usage_records=ids,
        )

    sums = {
        row["invoice_id"]: row
        for row in InvoiceLine.objects.filter(invoice__period=period.label)
        .values("invoice_id")
        .annotate(s=Sum("amount"), c=Sum("sla_credit"))
        .order_by("invoice_id")
    }
    for invoice in invoices.values():
        if invoice.state == Invoice.State.DRAFT:
            continue
        row = sums.get(invoice.pk, {"s": ZERO, "c": ZERO})
        subtotal, credits = row["s"] or ZERO, row["c"] or ZERO
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


# --- (b) invoice states and the payments behind them ---------------------------------------------------------


def _invoice_states_and_payments(result: Reconciliation, period: Period) -> None:
    invoices = list(Invoice.objects.filter(period=period.label).order_by("id"))
    currency_of = {invoice.pk: invoice.currency for invoice in invoices}
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
    for note in CreditNote.objects.filter(invoice__period=period.label).values("currency").annotate(a=Sum("amount")):
        result.total(note["currency"])["credit_notes"] += note["a"]

    for invoice in invoices:
        totals = result.total(invoice.currency)
        totals[invoice.state] += invoice.total
        took = received[invoice.pk]
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
            result.add(
                "paid_without_payment",
                f"Invoice {label} is paid ({invoice.total} {invoice.currency}) but its succeeded Stripe payments "
                f"come to {took}.",
                invoice.currency,
                invoices=[label],
                payments=payment_ids[invoice.pk],
            )
        elif invoice.state in (Invoice.State.OPEN, Invoice.State.VOID) and took > 0:
            result.add(
                "payment_on_unpaid_invoice",
                f"Invoice {label} is {invoice.state} but Stripe payments took {took} {invoice.currency} for it.",
                invoice.currency,
                invoices=[label],
                payments=payment_ids[invoice.pk],
            )
        if took > invoice.total and invoice.state != Invoice.State.OPEN:
            result.add(
                "invoice_overpaid",
                f"Invoice {label} ({invoice.total} {invoice.currency}) took {took} in Stripe payments.",
                invoice.currency,
                invoices=[label],
                payments=payment_ids[invoice.pk],
            )


# --- (c) provider statements and payouts ---------------------------------------------------------------------


def _statements_and_payouts(result: Reconciliation, period: Period) -> None:
    gross_of = {
        (row["provider_id"], row["currency"]): rating.to_money(row["a"])
        for row in _month_usage(period)
        .values("provider_id", "currency")
        .annotate(a=Sum("amount"))
        .order_by("provider_id", "currency")
    }
    owed = chargebacks(period)
    statements = list(
        ProviderStatement.objects.filter(period=period.label).order_by("organization_id", "currency", "id")
    )
    result.counts["statements"] = len(statements)
    payouts: dict[int, list[Payout]] = defaultdict(list)
    for payout in Payout.objects.filter(statement__period=period.label).exclude(state=Payout.State.FAILED):
        payouts[payout.statement_id].append(payout)
    made = set()
    for st in statements:
        key = (st.organization_id, st.currency)
        made.add(key)
        name = f"statement {st.pk} (provider {st.organization_id}, {st.currency})"
        ids = {"statements": [st.pk], "organizations": [st.organization_id]}
        totals = result.total(st.currency)
        totals["provider_gross"] += st.gross
        totals["commission"] += st.commission
        totals["provider_credits"] += st.credits
        totals["provider_net"] += st.net
        if st.net + st.commission + st.credits != st.gross:
            result.add(
                "statement_sums",
                f"In {name}, net {st.net} + commission {st.commission} + credits {st.credits} is not gross {st.gross}.",
                st.currency,
                **ids,
            )
        usage_gross = gross_of.get(key, ZERO)
        if st.gross != usage_gross:
            result.add(
                "statement_gross",
                f"The gross of {name} is {st.gross}; its provider's usage of {period.label} comes to {usage_gross}.",
                st.currency,
                **ids,
            )
        commission = rating.to_money(st.gross * st.take_rate)
        if st.commission != commission:
            result.add(
                "statement_commission",
                f"The commission of {name} is {st.commission}; {st.take_rate} of {st.gross} is {commission}.",
                st.currency,
                **ids,
            )
        charged_back = owed.get(key, ZERO)
        if st.credits != charged_back:
            result.add(
                "statement_credits",
                f"The credits of {name} are {st.credits}; the SLA credits and credit notes charged back to it "
                f"come to {charged_back}.",
                st.currency,
                **ids,
            )
        paid = [p for p in payouts[st.pk] if p.state == Payout.State.PAID]
        totals["paid_out"] += sum((p.amount for p in paid), ZERO)
        live_ids = [p.pk for p in payouts[st.pk]]
        if st.state == ProviderStatement.State.PAID:
            if not paid:
                result.add(
                    "payout_missing",
                    f"The {name} is paid but has no paid payout.",
                    st.currency,
                    **ids,
                    payouts=live_ids,
                )
            elif len(paid) > 1 or paid[0].amount != st.net or paid[0].currency != st.currency:
                found = ", ".join(f"{p.amount} {p.currency}" for p in paid)
                result.add(
                    "payout_amount",
                    f"The {name} has a net of {st.net} {st.currency}; it was paid out {found}.",
                    st.currency,
                    **ids,
                    payouts=[p.pk for p in paid],
                )
        elif paid:
            result.add(
                "payout_on_open_statement",
                f"The {name} is still open but has a paid payout.",
                st.currency,
                **ids,
                payouts=[p.pk for p in paid],
            )
    for key in sorted((set(gross_of) | {k for k, v in owed.items() if v}) - made):
        provider_id, currency = key
        result.add(
            "usage_without_statement",
            f"Provider {provider_id} has {gross_of.get(key, ZERO)} {currency} of usage (and "
            f"{owed.get(key, ZERO)} charged back) in {period.label} but no statement.",
            currency,
            organizations=[provider_id],
        )


# --- (d) Stripe ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settlement:
    """What Stripe says a payment took: minor units in a currency, from where."""

    amount: int
    currency: str
    source: str  # "balance_transaction" or "webhook_event"
    reference: str
    status: str = "succeeded"


def _from_api(intent_id: str) -> Settlement | None:
    """The PaymentIntent's charge and its balance transaction, through the SDK; None where Stripe cannot say."""
    try:
        intent = (
            gateway.client()
            .v1.payment_intents.retrieve(intent_id, params={"expand": ["latest_charge.balance_transaction"]})
            .to_dict()
        )
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return Settlement(0, "", "balance_transaction", intent_id, "missing")
        logger.warning("reconcile: payment intent %s could not be fetched: %s", intent_id, exc)
        return None
    except (stripe.StripeError, gateway.StripeUnavailable) as exc:
        logger.warning("reconcile: payment intent %s could not be fetched: %s", intent_id, exc)
        return None
    charge = intent.get("latest_charge")
    if not charge or isinstance(charge, str):
        return None
    txn = charge.get("balance_transaction")
    if not txn or isinstance(txn, str):
        return None
    status = str(intent.get("status")) if charge.get("status") == "succeeded" else f"charge {charge.get('status')}"
    if str(txn.get("currency", "")).lower() == str(charge.get("currency", "")).lower():
        amount, currency = int(txn["amount"]), str(txn["currency"])
    else:  # settled in another currency: the charge's own amount is what the customer paid
        amount, currency = int(charge["amount"]), str(charge["currency"])
    return Settlement(amount, currency.upper(), "balance_transaction", str(txn.get("id", "")), status)


def _from_events(intent_id: str) -> Settlement | None:
    event = (
        StripeEvent.objects.filter(type="payment_intent.succeeded", payload__data__object__id=intent_id)
        .order_by("-created", "-id")
        .first()
    )
    if event is None:
        return None
    obj = event.payload["data"]["object"]
    received = obj.get("amount_received", obj.get("amount"))
    if received is None:
        return None
    return Settlement(int(received), str(obj.get("currency", "")).upper(), "webhook_event", event.event_id)


def _stripe_payments(result: Reconciliation, period: Period, *, use_api: bool) -> None:
    checked = {"balance_transaction": 0, "webhook_event": 0}
    for payment in Payment.objects.filter(invoice__period=period.label, state__in=RECEIVED).order_by("id"):
        intent = payment.stripe_payment_intent
        found = (_from_api(intent) if use_api else None) or _from_events(intent)
        ids = {"payments": [payment.pk], "stripe_payment_intents": [intent], "invoices": [payment.invoice_id]}
        if found is None:
            result.add(
                "payment_unconfirmed",
                f"Payment {payment.pk} ({intent}, {payment.amount} {payment.currency}) is {payment.state} here, but "
                f"neither a Stripe balance transaction nor a payment_intent.succeeded event confirms it.",
                payment.currency,
                **ids,
            )
            continue
        checked[found.source] += 1
        expected = gateway.to_minor_units(payment.amount, payment.currency)
        if found.status == "missing":
            message = f"Payment {payment.pk} is {payment.state} here, but Stripe has no PaymentIntent {intent}."
            result.add("payment_stripe_amount", message, payment.currency, **ids)
        elif found.status != "succeeded" or found.amount != expected or found.currency != payment.currency:
            result.add(
                "payment_stripe_amount",
                f"Payment {payment.pk} ({intent}) is {payment.amount} {payment.currency} here; Stripe's "
                f"{found.source.replace('_', ' ')} {found.reference} says {found.amount} minor units of "
                f"{found.currency} ({found.status}).",
                payment.currency,
                **ids,
            )
    result.stripe.update({f"payments_by_{k}": v for k, v in checked.items()})


def _stripe_transfers(result: Reconciliation, period: Period, *, use_api: bool) -> None:
    transfers = Payout.objects.filter(
        statement__period=period.label, method=Payout.Method.STRIPE_TRANSFER, state=Payout.State.PAID
    ).order_by("id")
    checked = 0
    for payout in transfers:
        if not use_api:
            continue
        ids = {"payouts": [payout.pk], "transfers": [payout.reference], "statements": [payout.statement_id]}
        try:
            transfer = transfer_retrieve(payout.reference)
        except (TransferRefused, gateway.StripeUnavailable) as exc:
            result.add(
                "transfer_unconfirmed",
                f"Transfer {payout.reference} of payout {payout.pk} could not be fetched from Stripe: {exc}",
                payout.currency,
                **ids,
            )
            continue
        checked += 1
        expected = gateway.to_minor_units(payout.amount, payout.currency)
        if transfer.amount != expected or transfer.currency != payout.currency or transfer.reversed:
            reversed_ = ", reversed" if transfer.reversed else ""
            result.add(
                "transfer_mismatch",
                f"Payout {payout.pk} is {payout.amount} {payout.currency}; Stripe's transfer {transfer.id} is "
                f"{transfer.amount} minor units of {transfer.currency}{reversed_}.",
                payout.currency,
                **ids,
            )
    result.stripe["transfers_checked"] = checked
    result.stripe["transfers_unchecked"] = transfers.count() - checked


# --- export --------------------------------------------------------------------------------------------------


def mismatches_csv(result: Reconciliation) -> str:
    """The mismatches as CSV (one row each; `objects` as `name=id,id; name=...`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for m in result.mismatches:
        writer.writerow([result.period, m.kind, m.currency, m.message, m.objects_text()])
    return out.getvalue()
