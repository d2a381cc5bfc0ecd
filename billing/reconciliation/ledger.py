"""Check (e): the balance ledger. Every BalanceEntry made in the month has its cause, and each organisation's ledger
sums to what its causes say.

Per entry of the month (by `created_at`):
- a `top_up` entry names a TopUp of its organisation that succeeded for the entry's amount and currency, credited
  once (`top_up_entry_mismatch`), and Stripe confirms the PaymentIntent succeeded for that amount: with the API the
  intent's balance transaction, else its stored `payment_intent.succeeded` event, as stripe_checks.py confirms
  invoice payments (`top_up_unconfirmed`, `top_up_stripe_amount`); a TopUp made in the month that succeeded but
  was never credited is `top_up_not_credited`;
- the refund entries of a top-up sum to its `refunded` (`refund_entries`), its dispute and dispute-won entries to
  its `disputed` (`dispute_entries`), counted over all its entries for each top-up the month touched;
- a `settlement` entry names a paid invoice of its organisation and currency and takes exactly what it asked when
  it was settled: its amount due now plus the credit notes since returned to the balance (`settlement_mismatch`);
  a `credit_note` entry names a credit note of the same amount on an invoice settled from the balance
  (`credit_note_entry_mismatch`); a paid invoice of the month, of an organisation prepaid when it was paid, that no
  Stripe payment and no settlement paid is `settlement_missing`;
- no entry lacks its cause (`entry_without_cause`): a top-up, refund or dispute entry without its TopUp, a
  settlement without its invoice, a credit-note entry without its credit note, a bank transfer without the bank's
  reference.

Per organisation and currency with an entry or a top-up in the month, over its whole ledger as it stands
(`ledger_balance`): the sum of its entries equals top-ups (its succeeded TopUps) - refunds (their `refunded`) -
disputes + won (their `disputed`) + bank transfers + adjustments (staff's entries are their own record) -
settlements + credit-note returns (together: what its invoices settled from the balance still ask). Each term that
differs is named with the entries behind it. The month's entries are added to the totals, per kind (`ledger_*`).
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db.models import Q, Sum

from billing import stripe_gateway as gateway
from billing.invoicing import Period
from billing.models import BalanceEntry, CreditNote, Invoice, Payment, TopUp
from billing.reconciliation.report import RECEIVED, ZERO, Reconciliation, first_ids, prepaid_when
from billing.reconciliation.stripe_checks import intent_settlement

Kind = BalanceEntry.Kind
TOTAL_OF_KIND = {
    Kind.TOP_UP: "ledger_top_ups",
    Kind.REFUND: "ledger_refunds",
    Kind.DISPUTE: "ledger_disputes",
    Kind.DISPUTE_WON: "ledger_disputes_won",
    Kind.BANK_TRANSFER: "ledger_bank_transfers",
    Kind.ADJUSTMENT: "ledger_adjustments",
    Kind.SETTLEMENT: "ledger_settlements",
    Kind.CREDIT_NOTE: "ledger_credit_notes",
}
OF_TOP_UP = (Kind.TOP_UP, Kind.REFUND, Kind.DISPUTE, Kind.DISPUTE_WON)
DISPUTES = (Kind.DISPUTE, Kind.DISPUTE_WON)
OF_INVOICE = (Kind.SETTLEMENT, Kind.CREDIT_NOTE)
# The mismatch kinds this check lists (the staff page shows them in the ledger's section).
LEDGER_KINDS = frozenset(
    {
        "entry_without_cause",
        "top_up_entry_mismatch",
        "top_up_not_credited",
        "top_up_unconfirmed",
        "top_up_stripe_amount",
        "refund_entries",
        "dispute_entries",
        "settlement_mismatch",
        "credit_note_entry_mismatch",
        "settlement_missing",
        "ledger_balance",
    }
)


def check_ledger(result: Reconciliation, period: Period, *, use_api: bool) -> None:
    """The month's entries against their causes, then the ledger of each organisation they touch (reads only;
    `use_api`: ask Stripe's API for top-ups' PaymentIntents, as for invoice payments)."""
    entries = list(
        BalanceEntry.objects.filter(created_at__gte=period.start, created_at__lt=period.end)
        .select_related("top_up", "invoice", "credit_note")
        .order_by("id")
    )
    result.counts["balance_entries"] = len(entries)
    for entry in entries:
        totals = result.total(entry.currency)
        totals[TOTAL_OF_KIND[entry.kind]] += entry.amount
        totals["ledger_net"] += entry.amount
    caused = [entry for entry in entries if _has_cause(result, entry)]
    _check_top_up_entries(result, [e for e in caused if e.kind == Kind.TOP_UP], use_api=use_api)
    top_ups = TopUp.objects.filter(
        Q(pk__in={e.top_up_id for e in caused if e.top_up_id})
        | Q(created_at__gte=period.start, created_at__lt=period.end)
    ).order_by("id")
    _check_top_ups(result, list(top_ups))
    for entry in caused:
        if entry.kind == Kind.SETTLEMENT:
            _check_settlement(result, entry)
        elif entry.kind == Kind.CREDIT_NOTE:
            _check_credit_note_entry(result, entry)
    _check_settlements_missing(result, period)
    scope = {(e.organization_id, e.currency) for e in entries} | set(top_ups.values_list("organization_id", "currency"))
    for org_id, currency in sorted(scope):
        _check_balance(result, org_id, currency)


def _entry_ids(entry: BalanceEntry) -> dict[str, list]:
    return {"organizations": [entry.organization_id], "balance_entries": [entry.pk]}


def _has_cause(result: Reconciliation, entry: BalanceEntry) -> bool:
    """Whether the entry names what made it; an `entry_without_cause` mismatch otherwise."""
    if entry.kind in OF_TOP_UP:
        missing = "its top-up" if entry.top_up_id is None else ""
    elif entry.kind == Kind.SETTLEMENT:
        missing = "the invoice it paid" if entry.invoice_id is None else ""
    elif entry.kind == Kind.CREDIT_NOTE:
        missing = "the credit note it returns" if entry.credit_note_id is None or entry.invoice_id is None else ""
    elif entry.kind == Kind.BANK_TRANSFER:
        missing = "the bank's reference" if not entry.reference.strip() else ""
    else:  # an adjustment is staff's own record; the database requires its reason
        missing = ""
    if missing:
        result.add(
            "entry_without_cause",
            f"Balance entry {entry.pk} ({entry.kind} {entry.amount} {entry.currency}) of organisation "
            f"{entry.organization_id} does not name {missing}.",
            entry.currency,
            **_entry_ids(entry),
        )
    return not missing


def _check_top_up_entries(result: Reconciliation, entries: list[BalanceEntry], *, use_api: bool) -> None:
    """Each top-up credit against its TopUp (once, succeeded, same organisation, amount and currency) and Stripe."""
    credits = defaultdict(list)
    for entry in BalanceEntry.objects.filter(kind=Kind.TOP_UP, top_up__in={e.top_up_id for e in entries}):
        credits[entry.top_up_id].append(entry.pk)
    checked = {"balance_transaction": 0, "webhook_event": 0}
    for entry in entries:
        top_up = entry.top_up
        if top_up is None:  # _has_cause listed it
            continue
        ids = {**_entry_ids(entry), "top_ups": [top_up.pk], "stripe_payment_intents": [top_up.stripe_payment_intent]}
        wrong = []
        if top_up.state != TopUp.State.SUCCEEDED:
            wrong.append(f"the top-up is {top_up.state}")
        if (top_up.amount, top_up.currency) != (entry.amount, entry.currency):
            wrong.append(f"the top-up is {top_up.amount} {top_up.currency}")
        if top_up.organization_id != entry.organization_id:
            wrong.append(f"the top-up is organisation {top_up.organization_id}'s")
        if len(credits[top_up.pk]) > 1:
            wrong.append(f"it is credited {len(credits[top_up.pk])} times (entries {credits[top_up.pk]})")
        if wrong:
            result.add(
                "top_up_entry_mismatch",
                f"Top-up entry {entry.pk} credits {entry.amount} {entry.currency} to organisation "
                f"{entry.organization_id} for top-up {top_up.pk}, but {'; '.join(wrong)}.",
                entry.currency,
                **ids,
            )
        intent = top_up.stripe_payment_intent
        found = intent_settlement(intent, use_api=use_api)
        if found is None:
            result.add(
                "top_up_unconfirmed",
                f"Top-up entry {entry.pk} credits {entry.amount} {entry.currency} for {intent}, but neither a Stripe "
                f"balance transaction nor a payment_intent.succeeded event confirms it.",
                entry.currency,
                **ids,
            )
            continue
        checked[found.source] += 1
        expected = gateway.to_minor_units(entry.amount, entry.currency)
        if found.status == "missing":
            message = f"Top-up entry {entry.pk} credits {entry.amount} {entry.currency}, but Stripe has no {intent}."
            result.add("top_up_stripe_amount", message, entry.currency, **ids)
        elif found.status != "succeeded" or found.amount != expected or found.currency != entry.currency:
            result.add(
                "top_up_stripe_amount",
                f"Top-up entry {entry.pk} credits {entry.amount} {entry.currency} for {intent}; Stripe's "
                f"{found.source.replace('_', ' ')} {found.reference} says {found.amount} minor units of "
                f"{found.currency} ({found.status}).",
                entry.currency,
                **ids,
            )
    result.stripe.update({f"top_ups_by_{k}": v for k, v in checked.items()})


def _check_top_ups(result: Reconciliation, top_ups: list[TopUp]) -> None:
    """Each top-up the month touched: credited if it succeeded; its refund and dispute entries sum to its own."""
    sums: dict[tuple[int, str], Decimal] = defaultdict(lambda: ZERO)
    ids: dict[tuple[int, str], list[int]] = defaultdict(list)
    rows = BalanceEntry.objects.filter(top_up__in=[t.pk for t in top_ups]).values_list(
        "top_up_id", "kind", "id", "amount"
    )
    for top_up_id, kind, entry_id, amount in rows.order_by("id"):
        group = "dispute" if kind in DISPUTES else kind
        sums[top_up_id, group] += amount
        ids[top_up_id, group].append(entry_id)
    for top_up in top_ups:
        where = {"organizations": [top_up.organization_id], "top_ups": [top_up.pk]}
        if top_up.state == TopUp.State.SUCCEEDED and not ids[top_up.pk, Kind.TOP_UP]:
            result.add(
                "top_up_not_credited",
                f"Top-up {top_up.pk} ({top_up.stripe_payment_intent}) of organisation {top_up.organization_id} "
                f"succeeded for {top_up.amount} {top_up.currency} but no top-up entry credits it.",
                top_up.currency,
                **where,
                stripe_payment_intents=[top_up.stripe_payment_intent],
            )
        for group, field, kind in (
            ("refund", "refunded", "refund_entries"),
            ("dispute", "disputed", "dispute_entries"),
        ):
            own = getattr(top_up, field)
            if sums[top_up.pk, group] != -own:
                result.add(
                    kind,
                    f"Top-up {top_up.pk} of organisation {top_up.organization_id} has {own} {top_up.currency} "
                    f"{field}, but its {group} entries come to {-sums[top_up.pk, group]}.",
                    top_up.currency,
                    **where,
                    balance_entries=ids[top_up.pk, group],
                )


def _returned(invoice_id: int) -> Decimal:
    """What credit notes on the invoice gave back to the balance."""
    total = BalanceEntry.objects.filter(kind=Kind.CREDIT_NOTE, invoice_id=invoice_id).aggregate(t=Sum("amount"))["t"]
    return total or ZERO


def _check_settlement(result: Reconciliation, entry: BalanceEntry) -> None:
    invoice = entry.invoice
    if invoice is None:  # _has_cause listed it
        return
    asked = invoice.amount_due() + _returned(invoice.pk)
    wrong = []
    if invoice.organization_id != entry.organization_id:
        wrong.append(f"the invoice is organisation {invoice.organization_id}'s")
    if invoice.currency != entry.currency:
        wrong.append(f"the invoice is in {invoice.currency}")
    if invoice.state != Invoice.State.PAID:
        wrong.append(f"the invoice is {invoice.state}")
    if -entry.amount != asked:
        wrong.append(f"it asked {asked} when settled (its amount due and the credit notes returned since)")
    if wrong:
        result.add(
            "settlement_mismatch",
            f"Settlement entry {entry.pk} takes {-entry.amount} {entry.currency} from organisation "
            f"{entry.organization_id} for invoice {invoice}, but {'; '.join(wrong)}.",
            entry.currency,
            **_entry_ids(entry),
            invoices=[str(invoice)],
        )


def _check_credit_note_entry(result: Reconciliation, entry: BalanceEntry) -> None:
    note, invoice = entry.credit_note, entry.invoice
    if note is None or invoice is None:  # _has_cause listed it
        return
    wrong = []
    if (note.amount, note.currency) != (entry.amount, entry.currency):
        wrong.append(f"the credit note is {note.amount} {note.currency}")
    if note.invoice_id != invoice.pk or invoice.organization_id != entry.organization_id:
        wrong.append(f"the credit note is on invoice {note.invoice_id} of organisation {note.organization_id}")
    if not BalanceEntry.objects.filter(kind=Kind.SETTLEMENT, invoice_id=invoice.pk).exists():
        wrong.append(f"invoice {invoice} was not settled from the balance")
    if wrong:
        result.add(
            "credit_note_entry_mismatch",
            f"Credit-note entry {entry.pk} returns {entry.amount} {entry.currency} to organisation "
            f"{entry.organization_id} for {note.number}, but {'; '.join(wrong)}.",
            entry.currency,
            **_entry_ids(entry),
            credit_notes=[note.number],
            invoices=[str(invoice)],
        )


def _check_settlements_missing(result: Reconciliation, period: Period) -> None:
    """Paid invoices of the month that only the balance can have paid (prepaid then, no Stripe payment) but that no
    settlement entry paid."""
    paid = (
        Invoice.objects.filter(period=period.label, state=Invoice.State.PAID)
        .exclude(pk__in=BalanceEntry.objects.filter(kind=Kind.SETTLEMENT).values("invoice_id"))
        .exclude(pk__in=Payment.objects.filter(state__in=RECEIVED).values("invoice_id"))
        .order_by("id")
    )
    for invoice in paid:
        if invoice.amount_due() > 0 and prepaid_when(invoice.organization_id, invoice.paid_at):
            result.add(
                "settlement_missing",
                f"Invoice {invoice} of organisation {invoice.organization_id} ({invoice.amount_due()} "
                f"{invoice.currency} due) is paid and its organisation was prepaid, but neither a settlement from "
                f"the balance nor a Stripe payment paid it.",
                invoice.currency,
                organizations=[invoice.organization_id],
                invoices=[str(invoice)],
            )


def _check_balance(result: Reconciliation, org_id: int, currency: str) -> None:
    """The organisation's whole ledger in `currency` against its causes, term by term."""
    entries = BalanceEntry.objects.filter(organization_id=org_id, currency=currency)
    by_kind = {row["kind"]: row["a"] for row in entries.values("kind").annotate(a=Sum("amount")).order_by("kind")}
    ledger = sum(by_kind.values(), ZERO)
    top_ups = TopUp.objects.filter(organization_id=org_id, currency=currency)
    sums = top_ups.aggregate(
        credited=Sum("amount", filter=Q(state=TopUp.State.SUCCEEDED)),
        refunded=Sum("refunded"),
        disputed=Sum("disputed"),
    )
    settled = Invoice.objects.filter(
        organization_id=org_id,
        currency=currency,
        pk__in=BalanceEntry.objects.filter(kind=Kind.SETTLEMENT).values("invoice_id"),
    )
    billed = settled.aggregate(t=Sum("total"))["t"] or ZERO
    credited = CreditNote.objects.filter(invoice__in=settled).aggregate(t=Sum("amount"))["t"] or ZERO
    # (term, its kinds in the ledger, what its causes say it is)
    terms = [
        ("top-ups", (Kind.TOP_UP,), sums["credited"] or ZERO),
        ("refunds", (Kind.REFUND,), -(sums["refunded"] or ZERO)),
        ("disputes less disputes won", DISPUTES, -(sums["disputed"] or ZERO)),
        ("bank transfers and adjustments", (Kind.BANK_TRANSFER, Kind.ADJUSTMENT), None),
        ("settlements less credit-note returns", OF_INVOICE, -(billed - credited)),
    ]
    expected, differing, kinds = ZERO, [], []
    for name, term_kinds, caused in terms:
        booked = sum((by_kind.get(k, ZERO) for k in term_kinds), ZERO)
        expected += booked if caused is None else caused
        if caused is not None and booked != caused:
            differing.append(f"{name}: {booked} in the ledger, {caused} by their causes")
            kinds.extend(term_kinds)
    if differing:  # each term on its own: two wrong terms may cancel out in the sum
        result.add(
            "ledger_balance",
            f"Organisation {org_id}'s ledger sums to {ledger} {currency}, but top-ups - refunds - disputes + won + "
            f"transfers + adjustments - settlements + credit-note returns come to {expected} ({'; '.join(differing)}).",
            currency,
            organizations=[org_id],
            balance_entries=first_ids(entries.filter(kind__in=kinds)),
        )
