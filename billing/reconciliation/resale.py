"""Check (f): resale (issue 20). Per month and per resold card-second, the renter's charge, the reseller's contract
cost and the platform's commission add up.

A resale lease's allocation lies inside its reseller's contract allocation of the same card (`Allocation.backing`).
For each usage record of such an allocation (a resold slot part):

- it lies on the backing allocation's card and inside its period (`resale_unbacked`);
- its provider is the reseller, the backing lease's organisation (`resale_provider`): the renter's charge is the
  reseller's revenue, paid out on its statement less the commission, and never the server owner's;
- the backing allocation has its own usage record for the same slot (`resale_contract_unbilled`), which covers the
  resold part, bills at least as many seconds, is billed to the reseller at the contract's price and is earned by the
  server's owner: the contract keeps paying the provider whatever the resale earns.

Per reseller and currency the month's figures are added up, each rounded once as a statement rounds: resale revenue
(what renters were charged for resold cards), the commission on it at the reseller's take rate (its statement's, else
its terms'), the reseller's net (revenue - commission), the cost of its contracts that back resale offers, and its
margin (net - cost). They go into the totals (`resale_*`, `contract_cost`) and, per reseller, into `result.resale`.
The statements check (statements.py) holds the reseller's statement to its provider usage, resale included; the usage
check (usage.py) holds every renter's and reseller's record to its invoice line.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db import connection

from billing import rating
from billing.invoicing import Period, take_rates_of
from billing.models import ProviderStatement
from billing.reconciliation.report import MAX_IDS, ZERO, Reconciliation

# Each resold record of the month with its backing allocation, reseller, server owner and the backing record of the
# same slot (NULL columns when there is none).
_RESOLD_SQL = """
SELECT u.id, u.currency, u.provider_id, u.amount, u.seconds - u.down_seconds,
       al.gpu_id = b.gpu_id AND b.period @> tstzrange(u.start, u."end", '[)') AS inside,
       bl.organization_id AS reseller_id, s.organization_id AS owner_id, b.lease_id AS contract_id,
       bu.id, bu.organization_id, bu.provider_id, bu.unit_price = b.unit_price,
       tstzrange(bu.start, bu."end", '[)') @> tstzrange(u.start, u."end", '[)'), bu.seconds - bu.down_seconds
FROM billing_usagerecord u
JOIN scheduler_allocation al ON al.id = u.allocation_id
JOIN scheduler_allocation b ON b.id = al.backing_id
JOIN scheduler_lease bl ON bl.id = b.lease_id
JOIN inventory_server s ON s.id = b.server_id
LEFT JOIN billing_usagerecord bu ON bu.allocation_id = b.id AND bu.slot_start = u.slot_start
WHERE u.slot_start >= %(lo)s AND u.slot_start < %(hi)s
ORDER BY u.id
"""

# The month's cost of every contract that backs a resale offer, per reseller and currency.
_CONTRACT_COST_SQL = """
SELECT u.organization_id, u.currency, sum(u.amount)
FROM billing_usagerecord u
WHERE u.slot_start >= %(lo)s AND u.slot_start < %(hi)s
  AND u.lease_id IN (SELECT lease_id FROM scheduler_resale)
GROUP BY u.organization_id, u.currency
"""

Key = tuple[int, str]  # (reseller organisation id, currency)


def check_resale(result: Reconciliation, period: Period) -> None:
    params = {"lo": period.start, "hi": period.end}
    revenue: dict[Key, Decimal] = defaultdict(Decimal)
    seconds: dict[Key, Decimal] = defaultdict(Decimal)
    problems: dict[tuple[str, str], list[int]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(_RESOLD_SQL, params)
        rows = cursor.fetchall()
        cursor.execute(_CONTRACT_COST_SQL, params)
        cost = {(org_id, currency): amount for org_id, currency, amount in cursor.fetchall()}
    for row in rows:
        (record, currency, provider, amount, charged, inside, reseller, owner, _contract, backing_record) = row[:10]
        backing_org, backing_provider, contract_price, covers, backing_charged = row[10:]
        revenue[(reseller, currency)] += amount
        seconds[(reseller, currency)] += charged
        if not inside:
            problems[("resale_unbacked", currency)].append(record)
        if provider != reseller:
            problems[("resale_provider", currency)].append(record)
        if backing_record is None or not (
            covers
            and contract_price
            and backing_org == reseller
            and backing_provider == owner
            and backing_charged >= charged
        ):
            problems[("resale_contract_unbilled", currency)].append(record)
    _report(result, period, problems)
    _add_up(result, period, revenue, seconds, cost)


_MESSAGES = {
    "resale_unbacked": "{n} resold usage records of {period} lie outside their backing contract's card or period.",
    "resale_provider": "{n} resold usage records of {period} name a provider other than their reseller.",
    "resale_contract_unbilled": (
        "{n} resold usage records of {period} have no usage record of their backing contract for the same slot that "
        "covers them, bills the reseller at the contract price and pays the server's owner."
    ),
}


def _report(result: Reconciliation, period: Period, problems: dict[tuple[str, str], list[int]]) -> None:
    for (kind, currency), ids in sorted(problems.items()):
        message = _MESSAGES[kind].format(n=len(ids), period=period.label)
        result.add(kind, message, currency, usage_records=ids[:MAX_IDS])


def _add_up(
    result: Reconciliation,
    period: Period,
    revenue: dict[Key, Decimal],
    seconds: dict[Key, Decimal],
    cost: dict[Key, Decimal],
) -> None:
    """Per reseller and currency: revenue, commission, net, contract cost and margin, each rounded once; into the
    totals and `result.resale`."""
    keys = sorted(set(revenue) | set(cost))
    stated = dict(
        ((org_id, currency), take)
        for org_id, currency, take in ProviderStatement.objects.filter(period=period.label).values_list(
            "organization_id", "currency", "take_rate"
        )
    )
    takes = take_rates_of(sorted({org_id for org_id, _ in keys}))
    for key in keys:
        org_id, currency = key
        take = stated.get(key, takes[org_id])
        gross = rating.to_money(revenue.get(key, ZERO))
        commission = rating.to_money(gross * take)
        net = gross - commission
        contract = rating.to_money(cost.get(key, ZERO))
        totals = result.total(currency)
        totals["resale_revenue"] += gross
        totals["resale_commission"] += commission
        totals["resale_net"] += net
        totals["contract_cost"] += contract
        result.resale.append(
            {
                "organization": org_id,
                "currency": currency,
                "resold_card_seconds": seconds.get(key, ZERO),
                "resale_revenue": gross,
                "take_rate": take,
                "commission": commission,
                "resale_net": net,
                "contract_cost": contract,
                "margin": net - contract,
            }
        )
