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
from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet

from billing.invoicing import Period
from billing.metering import STORAGE_PLAN, handover
from billing.models import StorageRecord
from billing.reconciliation.records import RecordKind, check_record_kind
from billing.reconciliation.report import Reconciliation
from workloads.models import Volume, VolumeMove


def month_storage(period: Period) -> QuerySet[StorageRecord]:
    return STORAGE.month(period)


def check_storage(result: Reconciliation, period: Period) -> None:
    """The month's storage records against the storage lines of its finalised invoices, and each against itself."""
    check_record_kind(result, period, STORAGE)


def _volume_check(records: QuerySet[StorageRecord]) -> Callable[[StorageRecord], bool]:
    """A record against its volume's size, currency, organisation and life, and the server and price of its slot."""
    volumes = Volume.objects.unscoped("reconciliation reads every tenant's volumes").in_bulk(
        set(records.values_list("volume_id", flat=True).distinct())
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

    def fits(record: StorageRecord) -> bool:
        volume = volumes[record.volume_id]
        server_id, price = placed(volume, record.slot_start)
        ends = volume.wiped_at
        return not (
            record.size_gb != volume.size_gb
            or record.unit_price != price
            or record.server_id != server_id
            or record.currency != volume.currency
            or record.organization_id != volume.organization_id
            or record.start < volume.created_at
            or (ends is not None and record.end > ends)
        )

    return fits


STORAGE = RecordKind(
    model=StorageRecord,
    owner="volume",
    code="storage",
    noun="storage",
    owner_noun="volume",
    owner_objects="volumes",
    records_key="storage_records",
    per_unit="a GB-month",
    line_records="storage records",
    record_rule="GB-month or their volume's size, price and life",
    plan=STORAGE_PLAN,
    units=lambda record: record.size_gb,
    owner_check=_volume_check,
)
