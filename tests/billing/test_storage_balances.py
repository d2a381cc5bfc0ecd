"""Storage in an organisation's money (issue 16): month to date and available count its volumes' storage, metered
and not yet metered, as the invoice will; the burn counts each volume not wiped; the balance API and page show
them per volume; a provider's live earnings include the storage on its servers."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from billing import invoicing, metering, selectors
from billing.balances import standing
from billing.models import Invoice
from tests.billing.test_balances import MARCH, PRICES, credit, prepaid
from tests.billing.test_storage import make_volume, wipe
from tests.factories import online_server
from workloads.models import Volume

D = Decimal
HOUR = timedelta(hours=1)


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def server(clock, bob):
    return online_server(organization=bob.org, offer=PRICES, name="st-1")


@pytest.fixture(autouse=True)
def no_tax(settings):
    settings.SUANLI_TAX_RATE = D(0)


def test_month_to_date_and_available_include_storage_metered_or_not(clock, alice, server):
    prepaid(alice.org)
    credit(alice.org, "100.00", "W1")
    # March has 744 hours: 744 GB at 1.00 a GB-month is 1.00 an hour.
    volume = make_volume(alice.org, server, size_gb=744, price="1.0000")
    clock.move_to(MARCH + 5 * HOUR + timedelta(minutes=10))
    metering.meter()  # hours 0-5 metered
    clock.move_to(MARCH + 10 * HOUR + timedelta(minutes=30))
    money = standing(alice.org)
    assert money.month_to_date == D("10.50")  # 5 hours of records and 5.5 hours not metered yet
    assert money.this_month.per_volume == {volume.pk: D("10.50")}
    assert money.available == D("89.50")
    assert money.burn_per_volume == {volume.pk: D("1.00")} and money.burn_per_hour == D("1.00")
    assert money.runs_out_at == timezone.now() + timedelta(hours=89.5)


def test_month_to_date_shown_is_the_invoice_once_the_month_closes(clock, alice, server):
    made = MARCH + timedelta(days=3, hours=7, minutes=13, seconds=9)
    volume = make_volume(alice.org, server, size_gb=37, price="0.3333", at=made)
    clock.move_to(MARCH + timedelta(days=12, minutes=20))
    metering.meter()
    wipe(volume, MARCH + timedelta(days=20, hours=2, seconds=41))
    clock.move_to(MARCH + timedelta(days=30, hours=23, minutes=59))  # the last minute of March
    shown = standing(alice.org).month_to_date
    clock.move_to(MARCH + timedelta(days=31, hours=1))
    invoicing.close_period("2026-03")
    assert Invoice.objects.get(organization=alice.org).total == shown


def test_the_burn_counts_volumes_until_they_are_wiped(clock, alice, server):
    live = make_volume(alice.org, server, name="live", size_gb=744, price="2.0000")
    grace = make_volume(alice.org, server, name="kept", size_gb=744, price="1.0000", state="grace")
    gone = make_volume(alice.org, server, name="gone", size_gb=744, price="5.0000")
    wipe(gone, MARCH)
    money = standing(alice.org)
    assert money.burn_per_volume == {live.pk: D("2.00"), grace.pk: D("1.00")}
    assert money.burn_per_hour == D("3.00")


def test_the_balance_api_lists_volumes_with_their_spending_burn_and_wipe_date(clock, alice, server):
    volume = make_volume(alice.org, server, name="data", size_gb=744, price="1.0000")
    clock.move_to(MARCH + 3 * HOUR)
    body = alice.api.get("/api/v1/balance/").json()
    assert body["volumes"] == [
        {
            "volume": volume.pk,
            "name": "data",
            "size_gb": 744,
            "state": "ready",
            "wipe_at": None,
            "month_to_date": "3.00",
            "burn_per_hour": "1.00",
        }
    ]
    assert body["burn_per_hour"] == "1.00" and body["month_to_date"] == "3.00"


def test_the_balance_page_shows_volumes_and_when_those_in_grace_are_wiped(clock, alice, server, client):
    kept = make_volume(alice.org, server, name="kept-data", size_gb=10, state="ready")
    wipe_at = MARCH + timedelta(days=15)
    Volume.objects.filter(pk=kept.pk).update(state="grace", wipe_at=wipe_at)
    client.force_login(alice.user)
    body = client.get("/balance/").content.decode()
    assert f'id="balance-volume-{kept.pk}"' in body and "kept-data" in body
    assert 'id="volumes-grace"' in body and f'datetime="{wipe_at.isoformat()}"' in body
    assert "Running leases and volumes cost" in body


def test_a_providers_live_earnings_include_storage(clock, alice, bob, server):
    make_volume(alice.org, server, size_gb=744, price="1.0000")
    clock.move_to(MARCH + 4 * HOUR + timedelta(minutes=5))
    metering.meter()
    clock.move_to(MARCH + 6 * HOUR)
    (month,) = selectors.provider_month_so_far(org=bob.org, now=timezone.now())
    assert (month.currency, month.gross) == ("USD", D("6.00"))


def test_the_chinese_balance_page_and_invoice_name_storage_in_chinese(clock, alice, server, client):
    volume = make_volume(alice.org, server, name="data", size_gb=10)
    Volume.objects.filter(pk=volume.pk).update(state="grace", wipe_at=MARCH + timedelta(days=15))
    client.force_login(alice.user)
    body = client.get("/balance/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "存储卷" in body and "清除时间" in body and "1 个存储卷在宽限期内保留" in body
    clock.move_to(MARCH + timedelta(days=31, hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get(organization=alice.org)
    client.force_login(alice.user)  # a month later: a new session
    page = client.get(f"/invoices/{invoice.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "存储，存储卷 data (10 GB)" in page and "GB·月" in page


def test_the_spending_csv_has_a_row_per_day_and_volume(clock, alice, server, client):
    volume = make_volume(alice.org, server, size_gb=744, price="1.0000", at=MARCH + 20 * HOUR)
    clock.move_to(MARCH + 30 * HOUR)
    metering.meter(until=MARCH + 26 * HOUR)  # some of it metered, the rest live
    client.force_login(alice.user)
    rows = list(csv.reader(io.StringIO(client.get("/balance/spending.csv").content.decode())))
    assert rows == [
        ["date", "lease", "plan", "amount", "currency", "volume"],
        ["2026-03-01", "", "storage", "4.00", "USD", str(volume.pk)],  # 20:00 to midnight, platform time
        ["2026-03-02", "", "storage", "6.00", "USD", str(volume.pk)],
    ]
