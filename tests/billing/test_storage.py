"""Storage is billed (issue 16): a volume's seconds are metered once, per GB-month pro-rated per second of the
calendar month, from its creation until its data is wiped; invoices carry a line per volume, providers earn it."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import IntegrityError, transaction
from pypdf import PdfReader

from billing import invoicing, metering
from billing.models import Invoice, InvoiceLine, ProviderStatement, StorageRecord, UsageRecord
from scheduler import services
from tests.factories import online_server
from workloads.models import Volume

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
MAY = datetime(2026, 4, 30, 16, 0, tzinfo=UTC)
PRICES = {"card_hour_price": Decimal("2.5000"), "server_month_price": Decimal("12000.0000")}


def make_volume(org, server, *, name="data", size_gb=100, price="0.1000", at=MARCH, state="ready") -> Volume:
    """A volume asked for at `at` and (unless still `creating`) made by its agent at once: billed from `at`."""
    return Volume.objects.create(
        organization=org,
        server=server,
        name=name,
        size_gb=size_gb,
        state=state,
        price_per_gb_month=Decimal(price),
        currency=org.currency,
        created_at=at,
        ready_at=None if state == "creating" else at,
    )


def wipe(volume: Volume, at: datetime) -> None:
    Volume.objects.filter(pk=volume.pk).update(state="wiped", wiped_at=at)


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def server(bob):
    return online_server(organization=bob.org, offer=PRICES, name="s-1")


def test_a_whole_month_of_a_volume_is_size_times_price_metered_once_across_reruns(clock, alice, server):
    volume = make_volume(alice.org, server, size_gb=100, price="0.1005")
    for day in (3, 10, 10, 17, 31):  # reruns, one of them at the same instant, and the month's end
        clock.move_to(MARCH + timedelta(days=day, minutes=7))
        metering.meter()
    metering.meter(until=APRIL)
    records = StorageRecord.objects.filter(volume=volume, slot_start__lt=APRIL)
    assert records.count() == 31 * 24  # every hour of March, once
    assert sum(r.seconds for r in records) == Decimal(31 * 86400)
    assert sum(r.quantity for r in records) == Decimal(100)  # 100 GB-months
    assert sum(r.amount for r in records) == Decimal("10.05")  # 100 GB x 0.1005 a GB-month, to the 12th place
    assert {(r.organization_id, r.provider_id, r.server_id) for r in records} == {
        (alice.org.pk, server.organization_id, server.pk)
    }
    assert not UsageRecord.objects.exists()


def test_a_volume_made_and_wiped_mid_month_is_billed_for_exactly_its_life(clock, alice, server):
    made = MARCH + timedelta(days=4, hours=3, minutes=20, seconds=11)
    gone = MARCH + timedelta(days=19, hours=8, minutes=2, seconds=5)
    volume = make_volume(alice.org, server, size_gb=31, price="0.2400", at=made)
    clock.move_to(made + timedelta(days=2))
    metering.meter()
    wipe(volume, gone)
    clock.move_to(APRIL + timedelta(days=2))
    metering.meter()
    records = StorageRecord.objects.filter(volume=volume)
    life = Decimal((gone - made).total_seconds())
    assert sum(r.seconds for r in records) == life
    assert min(r.start for r in records) == made and max(r.end for r in records) == gone
    month = Decimal(31 * 86400)
    exact = (life * 31 * Decimal("0.24") / month).quantize(Decimal("0.000000000001"))
    assert sum(r.amount for r in records) == exact


def test_a_volume_over_two_months_is_billed_per_month_and_invoiced_each(clock, alice, bob, server):
    volume = make_volume(alice.org, server, size_gb=10, price="1.0000", at=MARCH + timedelta(days=15))
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    clock.move_to(MAY + timedelta(hours=1))
    invoicing.close_period("2026-04")
    lines = InvoiceLine.objects.filter(volume=volume).order_by("invoice__period")
    assert [line.invoice.period for line in lines] == ["2026-03", "2026-04"]
    # Sixteen of March's 31 days, then the whole of April (30 days): 10 GB at 1.00 a GB-month.
    assert lines[0].amount == Decimal("5.16") and lines[1].amount == Decimal("10.00")
    assert lines[1].quantity == Decimal("10.000000")


def test_invoices_carry_storage_lines_of_their_own_and_providers_earn_storage(clock, alice, bob, server, settings):
    settings.SUANLI_TAX_RATE = Decimal("0.06")
    lease = services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=APRIL)
    data = make_volume(alice.org, server, name="data", size_gb=100, price="0.1000")
    scratch = make_volume(alice.org, server, name="scratch", size_gb=50, price="0.2000")
    clock.move_to(APRIL + timedelta(hours=1))
    assert invoicing.close_period("2026-03") == {"invoices": 1, "statements": 1}
    invoice = Invoice.objects.get(organization=alice.org)
    lines = {line.description: line for line in invoice.lines.all()}
    assert set(lines) == {
        f"Whole server, lease {lease.pk}",
        "Storage, volume data (100 GB)",
        "Storage, volume scratch (50 GB)",
    }
    storage = lines["Storage, volume data (100 GB)"]
    assert (storage.plan, storage.volume_id, storage.lease_id, storage.unit) == ("storage", data.pk, None, "GB-month")
    assert (storage.quantity, storage.unit_price, storage.amount) == (Decimal("100"), Decimal("0.1"), Decimal("10"))
    assert lines["Storage, volume scratch (50 GB)"].volume_id == scratch.pk
    assert lines["Storage, volume scratch (50 GB)"].amount == Decimal("10.00")
    assert invoice.subtotal == Decimal("12020.00")
    assert invoice.tax == Decimal("721.20") and invoice.total == Decimal("12741.20")
    statement = ProviderStatement.objects.get(organization=bob.org)
    assert statement.gross == Decimal("12020.00")  # the server and the storage on it
    assert statement.net == statement.gross - statement.commission


def test_an_organisation_with_only_storage_gets_an_invoice_and_no_sla_credit(clock, alice, bob, server):
    make_volume(alice.org, server, size_gb=20, price="0.5000")
    clock.move_to(APRIL + timedelta(hours=1))
    assert invoicing.close_period("2026-03") == {"invoices": 1, "statements": 1}
    invoice = Invoice.objects.get(organization=alice.org)
    (line,) = invoice.lines.all()
    assert (line.amount, line.sla_credit, invoice.credits, invoice.subtotal) == (
        Decimal("10.00"),
        Decimal(0),
        Decimal(0),
        Decimal("10.00"),
    )


def test_an_invoice_line_names_a_lease_or_a_volume_never_both(clock, alice, server):
    volume = make_volume(alice.org, server)
    invoice = Invoice.objects.create(organization=alice.org, period="2026-03", currency="USD")
    common = {"invoice": invoice, "quantity": 1, "unit": "GB-month", "unit_price": 1, "amount": 1, "exact_amount": 1}
    with transaction.atomic(), pytest.raises(IntegrityError):
        InvoiceLine.objects.create(plan="storage", description="x", seconds=1, **common)
    lease = services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=APRIL)
    with transaction.atomic(), pytest.raises(IntegrityError):
        InvoiceLine.objects.create(plan="storage", description="x", seconds=1, lease=lease, volume=volume, **common)
    with transaction.atomic(), pytest.raises(IntegrityError):
        InvoiceLine.objects.create(plan="card_hour", description="x", seconds=1, volume=volume, **common)
    InvoiceLine.objects.create(plan="storage", description="x", seconds=1, volume=volume, **common)


def test_the_invoice_page_pdf_and_api_show_the_storage_line(clock, alice, bob, server, client):
    volume = make_volume(alice.org, server, name="weights", size_gb=40, price="0.2500")
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    client.force_login(alice.user)
    page = client.get(f"/invoices/{invoice.pk}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Storage, volume weights (40 GB)" in body and "GB-month" in body
    pdf = client.get(f"/invoices/{invoice.pk}/pdf/")
    assert pdf.status_code == 200

    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Storage, volume weights (40 GB)" in " ".join(text.split())
    (line,) = alice.api.get(f"/api/v1/invoices/{invoice.pk}/").json()["lines"]
    assert (line["lease"], line["volume"], line["plan"], line["amount"]) == (None, volume.pk, "storage", "10.00")


def test_a_finalised_invoices_storage_line_never_changes(clock, alice, server):
    make_volume(alice.org, server)
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    line = InvoiceLine.objects.get(volume__isnull=False)
    with transaction.atomic(), pytest.raises(IntegrityError, match="never change"):
        InvoiceLine.objects.filter(pk=line.pk).update(amount=Decimal("0.01"))
    with transaction.atomic(), pytest.raises(IntegrityError, match="never change"):
        InvoiceLine.objects.filter(pk=line.pk).delete()
