"""Reconciling storage (issue 16): a clean month with volumes has no mismatch; a storage record changed by hand,
one written after the close, and a statement whose gross leaves storage out are listed."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from billing import invoicing, metering
from billing.models import ProviderStatement, StorageRecord
from billing.reconciliation import reconcile
from tests.billing.test_storage import APRIL, MARCH, PRICES, make_volume
from tests.factories import online_server

D = Decimal


@pytest.fixture
def closed(alice, bob):
    """Alice keeps two volumes on bob's server through March (one wiped on the 20th); March is closed."""
    with time_machine.travel(MARCH, tick=False) as clock:
        server = online_server(organization=bob.org, offer=PRICES, name="rc-1")
        data = make_volume(alice.org, server, name="data", size_gb=100, price="0.1000")
        scratch = make_volume(alice.org, server, name="scratch", size_gb=7, price="0.3000")
        clock.move_to(MARCH + timedelta(days=20))
        metering.meter()
        scratch.state, scratch.wiped_at = "wiped", MARCH + timedelta(days=20, minutes=3)
        scratch.save()
        clock.move_to(APRIL + timedelta(hours=2))
        invoicing.close_period("2026-03")
        yield {"clock": clock, "data": data, "scratch": scratch, "server": server}


def kinds(result) -> set[str]:
    return {m.kind for m in result.mismatches}


def test_a_clean_month_with_storage_has_no_mismatch(closed):
    result = reconcile("2026-03", stripe_api=False)
    storage = {m.kind for m in result.mismatches if "storage" in m.kind or m.kind.startswith("statement")}
    assert storage == set()
    assert result.counts["storage_records"] == 744 + 20 * 24 + 1  # scratch's last record: 3 minutes
    assert result.total("USD")["metered"] == D("10.00") + D("1.35")  # 7 GB x 0.30 for 20 days and 3 minutes


def test_a_tampered_storage_record_is_listed_with_its_line_and_statement(closed):
    record = StorageRecord.objects.filter(volume=closed["data"]).order_by("slot_start")[10]
    StorageRecord.objects.filter(pk=record.pk).update(amount=record.amount + D("0.5"))
    result = reconcile("2026-03", stripe_api=False)
    assert {"storage_record", "storage_line_amount", "statement_gross"} <= kinds(result)
    (tampered,) = [m for m in result.mismatches if m.kind == "storage_record"]
    assert tampered.objects["storage_records"] == [record.pk] and tampered.objects["volumes"] == [closed["data"].pk]


def test_a_record_resized_with_its_amount_still_shows(closed):
    """Scaled together (size and amount), the line no longer matches; the record alone no longer matches its
    volume."""
    record = StorageRecord.objects.filter(volume=closed["data"]).order_by("slot_start")[0]
    StorageRecord.objects.filter(pk=record.pk).update(
        size_gb=200, amount=record.amount * 2, quantity=record.quantity * 2
    )
    assert "storage_record" in kinds(reconcile("2026-03", stripe_api=False))


def test_storage_written_after_the_close_is_listed(closed):
    closed["clock"].shift(timedelta(minutes=5))
    late = make_volume(closed["data"].organization, closed["server"], name="late", size_gb=5, at=MARCH)
    StorageRecord.objects.create(
        volume=late,
        organization=late.organization,
        provider=closed["server"].organization,
        server=closed["server"],
        slot_start=MARCH,
        start=MARCH,
        end=MARCH + timedelta(hours=1),
        seconds=3600,
        size_gb=5,
        unit_price=late.price_per_gb_month,
        currency="USD",
        quantity=D(0),
        amount=D(0),
    )
    result = reconcile("2026-03", stripe_api=False)
    assert {"storage_after_close", "storage_not_invoiced"} <= kinds(result)


def test_a_statement_gross_without_storage_is_listed(closed):
    statement = ProviderStatement.objects.get(period="2026-03")
    assert statement.gross == D("11.35")
    ProviderStatement.objects.filter(pk=statement.pk).update(gross=D("0.00"), commission=D(0), net=D("0.00"))
    assert "statement_gross" in kinds(reconcile("2026-03", stripe_api=False))
