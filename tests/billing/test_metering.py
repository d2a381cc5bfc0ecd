"""manage.py meter: allocation periods -> usage records per allocation and hour, idempotent, down time not charged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command

from billing.metering import lease_usage, meter
from billing.models import UsageRecord
from scheduler import services
from tests.factories import GpuHealthEventFactory, OrganizationFactory, ServerOutageFactory, online_server

T0 = datetime(2026, 3, 10, 2, 20, tzinfo=UTC)  # 10:20 in Asia/Shanghai, the platform clock


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def customer(db):
    return OrganizationFactory(currency="USD")


def test_each_card_gets_one_record_per_hour_or_part_and_a_rerun_adds_nothing(clock, customer):
    online_server(offer={"card_hour_price": Decimal("2.5000")})
    lease = services.lease_create(org=customer, plan="card_hour", gpu_count=2)
    clock.move_to(T0 + timedelta(hours=3))  # 13:20 local
    assert meter() == 6  # 10:20-11:00, 11:00-12:00, 12:00-13:00 for each card; 13:00- is not over yet
    assert meter() == 0
    call_command("meter", stdout=open("/dev/null", "w"))  # noqa: SIM115
    records = UsageRecord.objects.filter(lease=lease).order_by("allocation_id", "slot_start")
    assert records.count() == 6
    first = records[0]
    assert first.start == T0 and first.seconds == Decimal("2400") and first.down_seconds == 0
    # 2 cards x 2 h 40 min x 2.50 = 13.3333...
    total = sum(r.amount for r in records)
    assert total.quantize(Decimal("0.0001")) == Decimal("13.3333")


def test_failed_and_unreachable_seconds_are_not_charged(clock, customer):
    server = online_server(offer={"card_hour_price": Decimal("3.6000")})
    lease = services.lease_create(org=customer, plan="card_hour", gpu_count=2)
    gpu = lease.allocations.order_by("gpu__index").first().gpu
    GpuHealthEventFactory(
        gpu=gpu, server=server, at=T0 + timedelta(minutes=70), from_health="healthy", to_health="failed", handled_at=T0
    )
    GpuHealthEventFactory(
        gpu=gpu, server=server, at=T0 + timedelta(minutes=85), from_health="failed", to_health="healthy"
    )
    ServerOutageFactory(server=server, started_at=T0 + timedelta(minutes=100), ended_at=T0 + timedelta(minutes=110))
    clock.move_to(T0 + timedelta(minutes=160))  # 13:00 local
    meter()
    down = {
        r.allocation.gpu_id: sum(x.down_seconds for x in UsageRecord.objects.filter(allocation=r.allocation))
        for r in UsageRecord.objects.filter(lease=lease)
    }
    assert down[gpu.pk] == Decimal(15 * 60 + 10 * 60)
    assert sorted(down.values()) == [Decimal(600), Decimal(1500)]
    # Held 2 x 160 min (10:20-13:00), less 25 + 10 min down: 285 min at 3.60/h = 17.10
    usage = lease_usage(lease=lease)
    assert usage.amount == Decimal("17.10") and usage.currency == "USD"


def test_live_usage_adds_the_unmetered_part_with_the_same_rating(clock, customer):
    online_server(offer={"card_hour_price": Decimal("1.0000"), "card_hour_interruptible_price": None})
    lease = services.lease_create(org=customer, plan="card_hour", gpu_count=1)
    clock.move_to(T0 + timedelta(hours=1, minutes=40))  # 12:00 local
    meter()
    clock.move_to(T0 + timedelta(hours=2, minutes=10))  # 12:30 local: 30 min not metered yet
    usage = lease_usage(lease=lease)
    assert usage.seconds == Decimal(130 * 60)
    assert usage.amount == Decimal("2.17")  # 130 min at 1.00/h
    services.lease_end(lease=lease)
    clock.move_to(T0 + timedelta(hours=5))
    meter()
    assert lease_usage(lease=lease).amount == Decimal("2.17")


@pytest.mark.django_db(transaction=True)
def test_meters_running_at_once_write_each_record_once():
    import threading

    from django.db import connections

    from tests.support.db import own_connection

    customer = OrganizationFactory(currency="USD")
    with time_machine.travel(T0, tick=False) as clock:
        for _ in range(3):
            online_server()
        for _ in range(6):
            services.lease_create(org=customer, plan="card_hour", gpu_count=4)
        clock.move_to(T0 + timedelta(hours=30))
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def run() -> None:
            own_connection()
            try:
                start.wait()
                meter()
            except BaseException as exc:  # noqa: BLE001 - asserted empty below
                errors.append(exc)
            finally:
                connections["default"].close()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    # 24 cards x (10:20-11:00 + 29 whole hours up to 16:00 the next day)
    assert UsageRecord.objects.count() == 24 * 30
    assert UsageRecord.objects.values("allocation_id", "slot_start").distinct().count() == 24 * 30
