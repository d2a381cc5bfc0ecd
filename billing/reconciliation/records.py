"""Check (a) for a kind of record billed on invoice lines of its own (storage.py, data_access.py): the month's
records against the lines of its finalised invoices, and each record against itself and the object it is billed for.

A `RecordKind` names the model, the object each record and line is billed for (a volume, a data-access session), the
words and codes of its mismatches, and how a record is checked against its object. `check_record_kind` then adds, in
this order: `<code>_line_without_records` and `<code>_line_amount` per line, `<code>_not_invoiced` per group of
records on no line, `<code>_after_close` per invoice (report.records_after_close) and `<code>_record` per object
whose records do not match their own rating or the object.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, Model, QuerySet, Sum

from billing import rating
from billing.invoicing import Period
from billing.models import Invoice, InvoiceLine
from billing.reconciliation.report import MAX_IDS, Reconciliation, first_ids, records_after_close


@dataclass(frozen=True)
class RecordKind:
    model: type[Model]
    # The record's and the invoice line's foreign key to what it bills ("volume", "data_access").
    owner: str
    # The mismatch codes' prefix ("storage" gives storage_not_invoiced, storage_record, ...).
    code: str
    # The records in messages ("storage", "data-access") and the line ("Storage line 3 of ...").
    noun: str
    # What it bills, in messages ("volume", "session"), and its key in a mismatch's objects (None: not listed).
    owner_noun: str
    owner_objects: str | None
    # The key of the records' ids in a mismatch's objects and in the counts ("storage_records").
    records_key: str
    # The unit price's unit in messages ("a GB-month").
    per_unit: str
    # A line's records in its amount message ("storage records", "records").
    line_records: str
    # What a record that fails `owner_check` does not match, in its message.
    record_rule: str
    plan: str
    units: Callable[[Any], Any]
    # Given the month's records, a test of one record against what it bills (read once for all of them).
    owner_check: Callable[[QuerySet], Callable[[Any], bool]]

    @property
    def owner_id(self) -> str:
        return f"{self.owner}_id"

    @property
    def line_key(self) -> tuple[str, ...]:
        """A record's invoice line: the organisation, currency, owner and unit price it is billed under."""
        return ("organization_id", "currency", self.owner_id, "unit_price")

    def month(self, period: Period) -> QuerySet:
        return self.model.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)

    def owner_ids(self, owner_id: int) -> dict[str, list[int]]:
        return {self.owner_objects: [owner_id]} if self.owner_objects else {}


def check_record_kind(result: Reconciliation, period: Period, kind: RecordKind) -> None:
    """The month's records of `kind` against its lines on the finalised invoices, and each against itself."""
    key_fields = kind.line_key
    rows = kind.month(period).values(*key_fields).annotate(a=Sum("amount"), n=Count("id")).order_by(*key_fields)
    groups = {tuple(row[k] for k in key_fields): row for row in rows}
    result.counts[kind.records_key] = sum(row["n"] for row in groups.values())
    for key, row in groups.items():
        result.total(key[1])["metered"] += rating.to_money(row["a"])
    seen = _check_lines(result, period, kind, groups)
    _check_not_invoiced(result, period, kind, {key: row for key, row in groups.items() if key not in seen})
    records_after_close(
        result,
        period,
        kind.month(period),
        code=f"{kind.code}_after_close",
        noun=kind.noun,
        ids_key=kind.records_key,
    )
    _check_records(result, period, kind)


def _check_lines(
    result: Reconciliation, period: Period, kind: RecordKind, groups: dict[tuple, dict[str, Any]]
) -> set[tuple]:
    lines = (
        InvoiceLine.objects.filter(invoice__period=period.label, **{f"{kind.owner}__isnull": False})
        .exclude(invoice__state=Invoice.State.DRAFT)
        .values("id", kind.owner_id, "unit_price", "amount", "invoice__organization_id", "invoice__currency")
        .annotate(number=F("invoice__number"))
        .order_by("id")
    )
    seen: set[tuple] = set()
    for line in lines:
        currency, owner_id = line["invoice__currency"], line[kind.owner_id]
        key = (line["invoice__organization_id"], currency, owner_id, line["unit_price"])
        seen.add(key)
        what = f"{kind.noun.capitalize()} line {line['id']} of {line['number']} ({kind.owner_noun} {owner_id})"
        ids = {"invoices": [line["number"]], "invoice_lines": [line["id"]], **kind.owner_ids(owner_id)}
        group = groups.get(key)
        if group is None:
            message = f"{what} has no {kind.noun} record of {period.label}."
            result.add(f"{kind.code}_line_without_records", message, currency, **ids)
            continue
        expected = rating.to_money(group["a"])
        if expected != line["amount"]:
            message = f"{what} is {line['amount']} {currency}; its {group['n']} {kind.line_records} come to {expected}."
            result.add(f"{kind.code}_line_amount", message, currency, **ids)
    return seen


def _check_not_invoiced(
    result: Reconciliation, period: Period, kind: RecordKind, missing: dict[tuple, dict[str, Any]]
) -> None:
    for key, group in missing.items():
        org_id, currency, owner_id, price = key
        records = kind.month(period).filter(**dict(zip(kind.line_key, key, strict=True)))
        result.add(
            f"{kind.code}_not_invoiced",
            f"{group['n']} {kind.noun} records of {kind.owner_noun} {owner_id} (at {price} {currency} "
            f"{kind.per_unit}, {rating.to_money(group['a'])} {currency}) of organisation {org_id} are on no invoice "
            "line.",
            currency,
            **{kind.records_key: first_ids(records)},
            **kind.owner_ids(owner_id),
            organizations=[org_id],
        )


def _check_records(result: Reconciliation, period: Period, kind: RecordKind) -> None:
    """Each record rated again from its own seconds and its time, and set against what it bills (`owner_check`)."""
    fits = kind.owner_check(kind.month(period))
    wrong: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in kind.month(period).order_by("id").iterator(chunk_size=2000):
        fits_owner = fits(record)
        rated = rating.rate(
            plan=kind.plan,
            seconds=record.seconds,
            units=kind.units(record),
            unit_price=record.unit_price,
            at=record.start,
        )
        if (
            not fits_owner
            or rated.amount != record.amount
            or rated.quantity != record.quantity
            or record.seconds != rating.exact_seconds(record.end - record.start)
        ):
            wrong[(getattr(record, kind.owner_id), record.currency)].append(record.pk)
    for (owner_id, currency), ids in sorted(wrong.items()):
        result.add(
            f"{kind.code}_record",
            f"{len(ids)} {kind.noun} records of {kind.owner_noun} {owner_id} in {period.label} do not match their own "
            f"seconds rated per {kind.record_rule}.",
            currency,
            **{kind.records_key: ids[:MAX_IDS]},
            **kind.owner_ids(owner_id),
        )
