"""Check (a), data-access side (issue 16): every data-access record of the month is on the data-access line of its
organisation, currency, session and price per hour (`access_not_invoiced`), none was written after its invoice was
issued (`access_after_close`), and each such line's amount is to_money of its records (`access_line_amount`,
`access_line_without_records`). Each record is also checked against itself and its session: its amount and hours
are its seconds rated per hour, its price and currency the session's, its time inside the session's running time
(from its container's first `running` report to its end or `ends_at`) (`access_record`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import Count, F, QuerySet, Sum

from billing import rating
from billing.invoicing import Period
from billing.metering import ACCESS_PLAN
from billing.models import DataAccessRecord, Invoice, InvoiceLine
from billing.reconciliation.report import MAX_IDS, Reconciliation, first_ids, records_after_close
from workloads.models import DataAccess

# A data-access record's invoice line: the organisation, currency, session and price per hour it is billed under.
LINE_KEY = ("organization_id", "currency", "data_access_id", "unit_price")


def month_access(period: Period) -> QuerySet[DataAccessRecord]:
    return DataAccessRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)


def check_data_access(result: Reconciliation, period: Period) -> None:
    """The month's data-access records against the data-access lines of its finalised invoices, and each against
    itself."""
    rows = month_access(period).values(*LINE_KEY).annotate(a=Sum("amount"), n=Count("id")).order_by(*LINE_KEY)
    groups = {tuple(row[k] for k in LINE_KEY): row for row in rows}
    result.counts["data_access_records"] = sum(row["n"] for row in groups.values())
    for key, row in groups.items():
        result.total(key[1])["metered"] += rating.to_money(row["a"])
    seen = _check_lines(result, period, groups)
    for (org_id, currency, session_id, price), group in groups.items():
        if (org_id, currency, session_id, price) in seen:
            continue
        records = month_access(period).filter(
            organization_id=org_id, currency=currency, data_access_id=session_id, unit_price=price
        )
        result.add(
            "access_not_invoiced",
            f"{group['n']} data-access records of session {session_id} (at {price} {currency} an hour, "
            f"{rating.to_money(group['a'])} {currency}) of organisation {org_id} are on no invoice line.",
            currency,
            data_access_records=first_ids(records),
            organizations=[org_id],
        )
    records_after_close(
        result,
        period,
        month_access(period),
        code="access_after_close",
        noun="data-access",
        ids_key="data_access_records",
    )
    _check_records(result, period)


def _check_lines(result: Reconciliation, period: Period, groups: dict[tuple, dict[str, Any]]) -> set[tuple]:
    lines = (
        InvoiceLine.objects.filter(invoice__period=period.label, data_access__isnull=False)
        .exclude(invoice__state=Invoice.State.DRAFT)
        .values("id", "data_access_id", "unit_price", "amount", "invoice__organization_id", "invoice__currency")
        .annotate(number=F("invoice__number"))
        .order_by("id")
    )
    seen: set[tuple] = set()
    for line in lines:
        currency = line["invoice__currency"]
        key = (line["invoice__organization_id"], currency, line["data_access_id"], line["unit_price"])
        seen.add(key)
        what = f"Data-access line {line['id']} of {line['number']} (session {line['data_access_id']})"
        ids = {"invoices": [line["number"]], "invoice_lines": [line["id"]]}
        group = groups.get(key)
        if group is None:
            message = f"{what} has no data-access record of {period.label}."
            result.add("access_line_without_records", message, currency, **ids)
            continue
        expected = rating.to_money(group["a"])
        if expected != line["amount"]:
            message = f"{what} is {line['amount']} {currency}; its {group['n']} records come to {expected}."
            result.add("access_line_amount", message, currency, **ids)
    return seen


def _check_records(result: Reconciliation, period: Period) -> None:
    """Each record rated again from its own seconds, and set against its session's price and running time."""
    sessions = (
        DataAccess.objects.unscoped("reconciliation reads every tenant's data-access sessions")
        .select_related("workload")
        .in_bulk(set(month_access(period).values_list("data_access_id", flat=True).distinct()))
    )
    wrong: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in month_access(period).order_by("id").iterator(chunk_size=2000):
        session = sessions[record.data_access_id]
        rated = rating.rate(
            plan=ACCESS_PLAN, seconds=record.seconds, units=1, unit_price=record.unit_price, at=record.start
        )
        started = session.workload.started_at if hasattr(session, "workload") else None
        ends = min(session.ends_at, session.ended_at) if session.ended_at else session.ends_at
        if (
            rated.amount != record.amount
            or rated.quantity != record.quantity
            or record.unit_price != session.price_per_hour
            or record.currency != session.currency
            or record.organization_id != session.organization_id
            or started is None
            or record.start < started
            or record.end > ends
            or record.seconds != rating.exact_seconds(record.end - record.start)
        ):
            wrong[(record.data_access_id, record.currency)].append(record.pk)
    for (session_id, currency), ids in sorted(wrong.items()):
        result.add(
            "access_record",
            f"{len(ids)} data-access records of session {session_id} in {period.label} do not match their own "
            f"seconds rated per hour or their session's price and running time.",
            currency,
            data_access_records=ids[:MAX_IDS],
        )
