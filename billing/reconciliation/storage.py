"""Check (a), storage side (issue 16): every storage record of the month is on the storage line of its
organisation, currency, volume and price per GB-month (`storage_not_invoiced`), none was written after its invoice
was issued (`storage_after_close`), and each storage line's amount is to_money of its records
(`storage_line_amount`, `storage_line_without_records`). Each record is also checked against itself and its volume:
its amount and GB-months are its seconds rated per GB-month like a server-month of size_gb units, its size the
volume's, its server and price those the volume had in its slot (a moved volume's old ones until the hour after its
switch), its time inside the volume's life (`storage_record`): a record changed by hand shows here even when
its line was changed with it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import Count, F, QuerySet, Sum

from billing import rating
from billing.invoicing import Period
from billing.metering import STORAGE_PLAN, handover
from billing.models import Invoice, InvoiceLine, StorageRecord
from billing.reconciliation.report import MAX_IDS, Reconciliation, first_ids, records_after_close
from workloads.models import Volume, VolumeMove

# A storage record's invoice line: the organisation, currency, volume and price per GB-month it is billed under.
LINE_KEY = ("organization_id", "currency", "volume_id", "unit_price")


def month_storage(period: Period) -> QuerySet[StorageRecord]:
    return StorageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end)


def check_storage(result: Reconciliation, period: Period) -> None:
    """The month's storage records against the storage lines of its finalised invoices, and each against itself."""
    rows = month_storage(period).values(*LINE_KEY).annotate(a=Sum("amount"), n=Count("id")).order_by(*LINE_KEY)
    groups = {tuple(row[k] for k in LINE_KEY): row for row in rows}
    result.counts["storage_records"] = sum(row["n"] for row in groups.values())
    for key, row in groups.items():
        result.total(key[1])["metered"] += rating.to_money(row["a"])
    seen = _check_lines(result, period, groups)
    _check_not_invoiced(result, period, {key: row for key, row in groups.items() if key not in seen})
    records_after_close(
        result, period, month_storage(period), code="storage_after_close", noun="storage", ids_key="storage_records"
    )
    _check_records(result, period)


def _check_lines(result: Reconciliation, period: Period, groups: dict[tuple, dict[str, Any]]) -> set[tuple]:
    lines = (
        InvoiceLine.objects.filter(invoice__period=period.label, volume__isnull=False)
        .exclude(invoice__state=Invoice.State.DRAFT)
        .values("id", "volume_id", "unit_price", "amount", "invoice__organization_id", "invoice__currency")
        .annotate(number=F("invoice__number"))
        .order_by("id")
    )
    seen: set[tuple] = set()
    for line in lines:
        currency = line["invoice__currency"]
        key = (line["invoice__organization_id"], currency, line["volume_id"], line["unit_price"])
        seen.add(key)
        what = f"Storage line {line['id']} of {line['number']} (volume {line['volume_id']})"
        ids = {"invoices": [line["number"]], "invoice_lines": [line["id"]], "volumes": [line["volume_id"]]}
        group = groups.get(key)
        if group is None:
            result.add(
                "storage_line_without_records", f"{what} has no storage record of {period.label}.", currency, **ids
            )
            continue
        expected = rating.to_money(group["a"])
        if expected != line["amount"]:
            message = f"{what} is {line['amount']} {currency}; its {group['n']} storage records come to {expected}."
            result.add("storage_line_amount", message, currency, **ids)
    return seen


def _check_not_invoiced(result: Reconciliation, period: Period, missing: dict[tuple, dict[str, Any]]) -> None:
    for (org_id, currency, volume_id, price), group in missing.items():
        records = month_storage(period).filter(
            organization_id=org_id, currency=currency, volume_id=volume_id, unit_price=price
        )
        result.add(
            "storage_not_invoiced",
            f"{group['n']} storage records of volume {volume_id} (at {price} {currency} a GB-month, "
            f"{rating.to_money(group['a'])} {currency}) of organisation {org_id} are on no invoice line.",
            currency,
            storage_records=first_ids(records),
            volumes=[volume_id],
            organizations=[org_id],
        )


def _check_records(result: Reconciliation, period: Period) -> None:
    """Each record rated again from its own seconds, and set against its volume's size, price and life."""
    volumes = Volume.objects.unscoped("reconciliation reads every tenant's volumes").in_bulk(
        set(month_storage(period).values_list("volume_id", flat=True).distinct())
    )
    # A moved volume is billed on its old server at its old price until the platform-clock hour after each switch
    # (billing/metering.py): (handover, server, price) of its moves, in order.
    stays: dict[int, list[tuple[Any, int, Any]]] = defaultdict(list)
    moves = VolumeMove.objects.unscoped("reconciliation reads every tenant's volume moves").filter(
        volume_id__in=list(volumes), state="done"
    )
    for move in moves.order_by("switched_at", "id"):
        stays[move.volume_id].append((handover(move.switched_at), move.source_id, move.source_price))

    def placed(volume: Volume, slot_start: Any) -> tuple[int, Any]:
        for until, server_id, price in stays.get(volume.pk, ()):
            if slot_start < until:
                return server_id, price
        return volume.server_id, volume.price_per_gb_month

    wrong: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in month_storage(period).order_by("id").iterator(chunk_size=2000):
        volume = volumes[record.volume_id]
        server_id, price = placed(volume, record.slot_start)
        rated = rating.rate(
            plan=STORAGE_PLAN,
            seconds=record.seconds,
            units=record.size_gb,
            unit_price=record.unit_price,
            at=record.start,
        )
        ends = volume.wiped_at
        if (
            rated.amount != record.amount
            or rated.quantity != record.quantity
            or record.size_gb != volume.size_gb
            or record.unit_price != price
            or record.server_id != server_id
            or record.currency != volume.currency
            or record.organization_id != volume.organization_id
            or record.start < volume.created_at
            or (ends is not None and record.end > ends)
            or record.seconds != rating.exact_seconds(record.end - record.start)
        ):
            wrong[(record.volume_id, record.currency)].append(record.pk)
    for (volume_id, currency), ids in sorted(wrong.items()):
        result.add(
            "storage_record",
            f"{len(ids)} storage records of volume {volume_id} in {period.label} do not match their own seconds "
            f"rated per GB-month or their volume's size, price and life.",
            currency,
            storage_records=ids[:MAX_IDS],
            volumes=[volume_id],
        )
