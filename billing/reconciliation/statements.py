"""Check (c): provider statements and payouts. Each statement's net + commission + credits is its gross
(`statement_sums`); its gross is to_money of its provider's usage and storage of the month in its currency
(`statement_gross`, `usage_without_statement`); its commission is gross x take rate (`statement_commission`); its
credits are the SLA credits and credit notes charged back to it (`statement_credits`). A paid statement has one paid
payout of exactly its net (`payout_missing`, `payout_amount`); an open one has none (`payout_on_open_statement`)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from billing import rating
from billing.invoicing import Period, chargebacks
from billing.models import Payout, ProviderStatement
from billing.reconciliation.data_access import month_access
from billing.reconciliation.report import ZERO, Reconciliation, month_usage
from billing.reconciliation.storage import month_storage

Key = tuple[int, str]  # (provider organisation id, currency)


def check_statements(result: Reconciliation, period: Period) -> None:
    gross_of = _usage_gross(period)
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
        _check_statement(result, period, st, usage_gross=gross_of.get(key, ZERO), charged_back=owed.get(key, ZERO))
        _check_payouts(result, st, payouts[st.pk])
    for key in sorted((set(gross_of) | {k for k, v in owed.items() if v}) - made):
        provider_id, currency = key
        result.add(
            "usage_without_statement",
            f"Provider {provider_id} has {gross_of.get(key, ZERO)} {currency} of usage (and "
            f"{owed.get(key, ZERO)} charged back) in {period.label} but no statement.",
            currency,
            organizations=[provider_id],
        )


def _usage_gross(period: Period) -> dict[Key, Decimal]:
    """Each provider's usage, storage and data access of the month per currency, rounded to money as its statement's
    gross is."""
    exact: dict[Key, Decimal] = defaultdict(Decimal)
    for records in (month_usage(period), month_storage(period), month_access(period)):
        for row in (
            records.values("provider_id", "currency").annotate(a=Sum("amount")).order_by("provider_id", "currency")
        ):
            exact[(row["provider_id"], row["currency"])] += row["a"]
    return {key: rating.to_money(amount) for key, amount in sorted(exact.items())}


def _name(st: ProviderStatement) -> str:
    return f"statement {st.pk} (provider {st.organization_id}, {st.currency})"


def _ids(st: ProviderStatement) -> dict[str, Any]:
    return {"statements": [st.pk], "organizations": [st.organization_id]}


def _check_statement(
    result: Reconciliation, period: Period, st: ProviderStatement, *, usage_gross: Decimal, charged_back: Decimal
) -> None:
    """The statement's own sums against the usage and the charge-backs behind it; adds it to the totals."""
    name, ids = _name(st), _ids(st)
    totals = result.total(st.currency)
    totals["provider_gross"] += st.gross
    totals["commission"] += st.commission
    totals["provider_credits"] += st.credits
    totals["provider_net"] += st.net
    if st.net + st.commission + st.credits != st.gross:
        parts = f"net {st.net} + commission {st.commission} + credits {st.credits}"
        message = f"In {name}, {parts} is not gross {st.gross}."
        result.add("statement_sums", message, st.currency, **ids)
    if st.gross != usage_gross:
        message = f"The gross of {name} is {st.gross}; its provider's usage of {period.label} comes to {usage_gross}."
        result.add("statement_gross", message, st.currency, **ids)
    commission = rating.to_money(st.gross * st.take_rate)
    if st.commission != commission:
        message = f"The commission of {name} is {st.commission}; {st.take_rate} of {st.gross} is {commission}."
        result.add("statement_commission", message, st.currency, **ids)
    if st.credits != charged_back:
        message = (
            f"The credits of {name} are {st.credits}; the SLA credits and credit notes charged back to it "
            f"come to {charged_back}."
        )
        result.add("statement_credits", message, st.currency, **ids)


def _check_payouts(result: Reconciliation, st: ProviderStatement, live: list[Payout]) -> None:
    """The statement's live (pending or paid) payouts against its state and net; adds what was paid out."""
    name, ids = _name(st), _ids(st)
    paid = [p for p in live if p.state == Payout.State.PAID]
    result.total(st.currency)["paid_out"] += sum((p.amount for p in paid), ZERO)
    if st.state == ProviderStatement.State.PAID:
        if not paid:
            message = f"The {name} is paid but has no paid payout."
            result.add("payout_missing", message, st.currency, **ids, payouts=[p.pk for p in live])
        elif len(paid) > 1 or paid[0].amount != st.net or paid[0].currency != st.currency:
            found = ", ".join(f"{p.amount} {p.currency}" for p in paid)
            message = f"The {name} has a net of {st.net} {st.currency}; it was paid out {found}."
            result.add("payout_amount", message, st.currency, **ids, payouts=[p.pk for p in paid])
    elif paid:
        message = f"The {name} is still open but has a paid payout."
        result.add("payout_on_open_statement", message, st.currency, **ids, payouts=[p.pk for p in paid])
