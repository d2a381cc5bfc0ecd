"""Rating and proration, property-tested for what a customer sees on an invoice.

Held time is cut the way metering cuts it (platform-clock hours, 3600 s apart from the first) and each part is rated
with billing/rating.py; the database tests drive the real `meter` and `close_period`. Amounts keep 12 decimal places
(an error of half a unit of the 12th place per rounding, `HALF_ULP`); money is rounded once, to the cent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing import invoicing, metering, rating
from billing.models import Invoice, ProviderStatement, UsageRecord
from scheduler import services
from scheduler.pricing import UNIT_PLACES
from tests.factories import AllocationFactory, LeaseFactory, OrganizationFactory, UsageRecordFactory, online_server

D = Decimal
HOUR = timedelta(hours=1)
ULP = D("1e-12")
HALF_ULP = D("0.5e-12")
ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York"]
# gpu counts whose 1/n is exact at 12 places (the others leave a server's card shares short of or over 1)
EXACT_SHARES = {n for n in range(1, 17) if (D(1) / n).quantize(UNIT_PLACES) * n == 1}

zones = st.sampled_from(ZONES)
months = st.tuples(st.integers(2026, 2030), st.integers(1, 12))
offer_prices = st.decimals(min_value=D("0.0001"), max_value=D("1000000"), places=4)  # inventory Offer: 4 places
fx_prices = st.decimals(min_value=D("0.000001"), max_value=D("100000"), places=6)  # converted: 6 places
prices = st.one_of(offer_prices, fx_prices)
cent_prices = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)
instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))  # noqa: DTZ001
PURE = settings(max_examples=30, deadline=None)
DB = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextmanager
def platform_clock(zone: str) -> Iterator[ZoneInfo]:
    with override_settings(PLATFORM_TIME_ZONE=zone):
        yield ZoneInfo(zone)


@contextmanager
def rolled_back() -> Iterator[None]:
    """One hypothesis example's rows, undone before the next example."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def seconds(delta: timedelta) -> Decimal:
    return D(delta // timedelta(microseconds=1)).scaleb(-6)


def month_of(year_month: tuple[int, int], zone: ZoneInfo) -> tuple[datetime, datetime]:
    return rating.month_bounds(datetime(*year_month, 15, tzinfo=zone), zone)


def held_slots(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut as metering's SQL cuts it: from the platform-clock hour of `start`, every 3600 s."""
    hour = metering.hour_floor(start)
    while hour < end:
        yield max(hour, start), min(hour + HOUR, end)
        hour += HOUR


def month_parts(start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    """[start, end) cut at month edges only (the same total as hour slots: see the splitting test)."""
    while start < end:
        part_end = min(rating.month_bounds(start)[1], end)
        yield start, part_end
        start = part_end


@dataclass
class Charge:
    quantity: Decimal
    amount: Decimal
    months: int  # month parts: each is rounded at its two ends, so it is within ULP of exact


def charged(plan: str, start: datetime, end: datetime, units: Decimal, price: Decimal, *, cut=held_slots) -> Charge:
    quantity = amount = D(0)
    for part_start, part_end in cut(start, end):
        rated = rating.rate(
            plan=plan, seconds=seconds(part_end - part_start), units=units, unit_price=price, at=part_start
        )
        quantity += rated.quantity
        amount += rated.amount
    return Charge(quantity, amount, months=len(list(month_parts(start, end))))


def exact_cost(plan: str, start: datetime, end: datetime, units: Decimal, price: Decimal) -> Fraction:
    """What [start, end) costs with no rounding at all."""
    total = Fraction(0)
    for part_start, part_end in month_parts(start, end):
        per = rating.unit_seconds(plan, part_start)
        total += Fraction(seconds(part_end - part_start)) * Fraction(units) * Fraction(price) / per
    return total


def off_by(amount: Decimal, exact: Fraction | Decimal) -> Fraction:
    return abs(Fraction(amount) - Fraction(exact))


def half_cent_distance(amount: Decimal | Fraction) -> Fraction:
    """How far `amount` is from the nearest x.xx5, where rounding to the cent tips over."""
    cents = Fraction(amount) * 100
    return abs(cents - int(cents) - Fraction(1, 2)) / 100


# --- (a) a whole month, cut into hour slots -----------------------------------------------------------------


@PURE
@given(month=months, zone=zones, gpus=st.integers(1, 16), price=prices)
@example(month=(2026, 4), zone="Asia/Shanghai", gpus=1, price=D("100.0050"))  # 720 slots; drifted to 100.00
@example(month=(2027, 3), zone="Europe/Berlin", gpus=8, price=D("12000.0050"))
def test_a_server_held_for_a_whole_month_costs_exactly_its_monthly_price(month, zone, gpus, price):
    with platform_clock(zone) as tz:
        start, end = month_of(month, tz)
        units = (D(1) / gpus).quantize(UNIT_PLACES)  # each card's share, as scheduler/pricing.py sets it
        card = charged("server_month", start, end, units, price)  # every card of the server alike
    total = card.amount * gpus
    if gpus in EXACT_SHARES:
        assert total == price
        assert card.quantity * gpus == 1
    # Otherwise only the share 1/gpus and each card's month are rounded (at 12 places), never each slot.
    bound = gpus * (price + 1) * HALF_ULP
    assert off_by(total, price) <= bound
    if gpus in EXACT_SHARES or half_cent_distance(price) > bound:
        assert rating.to_money(total) == rating.to_money(price)


@PURE
@given(month=months, zone=zones, price=prices)
def test_a_card_held_for_a_whole_month_costs_its_hours_times_the_hourly_price(month, zone, price):
    with platform_clock(zone) as tz:
        start, end = month_of(month, tz)
        card = charged("card_hour", start, end, D(1), price)
    hours = D(int((end - start).total_seconds()) // 3600)
    assert card.quantity == hours
    assert card.amount == hours * price


def test_a_three_card_server_at_a_half_cent_monthly_price_is_billed_the_cent_rounded_up():
    with platform_clock("Asia/Shanghai") as tz:
        start, end = month_of((2026, 4), tz)
        units = (D(1) / 3).quantize(UNIT_PLACES)
        total = charged("server_month", start, end, units, D("100.0050")).amount * 3
    assert rating.to_money(total) == D("100.01")


# --- (c) splitting a held stretch ----------------------------------------------------------------------------


@PURE
@given(
    plan=st.sampled_from(["card_hour", "server_month", "pflops_year"]),
    zone=zones,
    start=instants,
    length=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=9)),
    cuts=st.lists(st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True), max_size=4),
    units=st.decimals(min_value=D("0.000000000001"), max_value=D("100"), places=12),
    price=prices,
)
def test_splitting_a_held_stretch_anywhere_never_changes_what_it_costs(plan, zone, start, length, cuts, units, price):
    """A resize or failover at any instant (microseconds included) ends one allocation and starts another."""
    end = start + length
    edges = sorted({start + length * f for f in cuts})  # timedelta x float: whole microseconds
    pieces = list(zip([start, *edges], [*edges, end], strict=True))
    pieces = [(a, b) for a, b in pieces if a < b]
    with platform_clock(zone):
        whole = charged(plan, start, end, units, price)
        split = [charged(plan, a, b, units, price) for a, b in pieces]
        exact = exact_cost(plan, start, end, units, price)
    # Amounts telescope from slot to slot and piece to piece: not even the 12th place moves.
    assert sum(p.amount for p in split) == whole.amount
    assert sum(p.quantity for p in split) == whole.quantity
    assert rating.to_money(sum(p.amount for p in split)) == rating.to_money(whole.amount)
    assert off_by(whole.amount, exact) <= whole.months * ULP


# --- (d) month edges and leap years -------------------------------------------------------------------------


@PURE
@given(month=months, zone=zones, price=prices, gpus=st.integers(1, 16))
def test_the_last_second_of_a_month_is_rated_by_its_length_and_the_next_first_second_by_the_next_length(
    month, zone, price, gpus
):
    units = (D(1) / gpus).quantize(UNIT_PLACES)
    second = timedelta(seconds=1)
    with platform_clock(zone) as tz:
        start, end = month_of(month, tz)
        next_end = rating.month_bounds(end)[1]
        last = rating.rate(plan="server_month", seconds=D(1), units=units, unit_price=price, at=end - second)
        first = rating.rate(plan="server_month", seconds=D(1), units=units, unit_price=price, at=end)
        hourly = [
            rating.rate(plan="card_hour", seconds=D(1), units=D(1), unit_price=price, at=at)
            for at in (end - second, end)
        ]
    this_length, next_length = seconds(end - start), seconds(next_end - end)
    assert off_by(last.amount, Fraction(units) * Fraction(price) / Fraction(this_length)) <= ULP
    assert off_by(first.amount, Fraction(units) * Fraction(price) / Fraction(next_length)) <= ULP
    assert off_by(last.quantity, Fraction(units) / Fraction(this_length)) <= ULP
    assert off_by(first.quantity, Fraction(units) / Fraction(next_length)) <= ULP
    # A card-hour costs the same either side of the edge.
    assert hourly[0].amount == hourly[1].amount


@pytest.mark.parametrize(
    "month, days",
    [((2027, 2), 28), ((2028, 2), 29), ((2100, 2), 28), ((2000, 2), 29), ((2026, 4), 30), ((2026, 12), 31)],
)
def test_a_month_has_the_seconds_of_its_own_days(month, days):
    with platform_clock("Asia/Shanghai") as tz:
        start, end = month_of(month, tz)
        assert rating.month_seconds(start) == days * 86400
        held = charged("server_month", start, end, D(1), D("12000.0000"))
    assert held.amount == D("12000") and held.quantity == 1


def test_a_second_of_february_costs_more_in_a_common_year_than_in_a_leap_year():
    price = D(28 * 86400)  # one unit of money a second in February 2027
    with platform_clock("Asia/Shanghai") as tz:
        common = rating.rate(
            plan="server_month", seconds=D(1), units=D(1), unit_price=price, at=datetime(2027, 2, 10, tzinfo=tz)
        )
        leap = rating.rate(
            plan="server_month", seconds=D(1), units=D(1), unit_price=price, at=datetime(2028, 2, 10, tzinfo=tz)
        )
        leap_day = rating.rate(
            plan="server_month", seconds=D(86400), units=D(1), unit_price=price, at=datetime(2028, 2, 29, tzinfo=tz)
        )
        march_first = rating.rate(
            plan="server_month", seconds=D(86400), units=D(1), unit_price=price, at=datetime(2028, 3, 1, tzinfo=tz)
        )
    assert common.amount == 1
    assert off_by(leap.amount, Fraction(28, 29)) <= ULP
    assert off_by(leap_day.amount, price / 29) <= ULP  # the 29th of February is a 29th of its month ...
    assert off_by(march_first.amount, price / 31) <= ULP  # ... and the 1st of March a 31st of March


# --- (e) DST -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone, month, hours",
    [
        ("Europe/Berlin", (2027, 3), 31 * 24 - 1),
        ("Europe/Berlin", (2027, 10), 31 * 24 + 1),
        ("America/New_York", (2027, 3), 31 * 24 - 1),
        ("America/New_York", (2027, 11), 30 * 24 + 1),
        ("Asia/Shanghai", (2027, 3), 31 * 24),
    ],
)
def test_the_month_of_a_dst_change_has_an_hour_less_or_more_and_still_costs_its_price(zone, month, hours):
    with platform_clock(zone) as tz:
        start, end = month_of(month, tz)
        slots = list(held_slots(start, end))
        assert rating.month_seconds(start) == hours * 3600
        assert len(slots) == hours
        assert all(b - a == HOUR for a, b in slots)
        assert all(a.astimezone(tz).minute == 0 for a, _ in slots)
        server = charged("server_month", start, end, D("0.125"), D("12000.0000")).amount * 8
        card = charged("card_hour", start, end, D(1), D("2.5000")).amount
    assert server == D("12000")
    assert card == hours * D("2.5")


# --- (f) pflops_year -------------------------------------------------------------------------------------------


@PURE
@given(
    zone=zones,
    start=instants,
    pflops=st.decimals(min_value=D("0.001"), max_value=D("1000"), places=3),
    price=offer_prices,
    tflops=st.lists(st.decimals(min_value=D("10"), max_value=D("2500"), places=2), min_size=1, max_size=16),
)
@example(zone="Asia/Shanghai", start=datetime(2027, 1, 1, tzinfo=UTC), pflops=D("10"), price=D("150000"),
         tflops=[D("989.40"), D("989.40"), D("312.00")])  # fmt: skip
def test_a_pflops_year_held_for_365_days_costs_the_contract_times_the_price(zone, start, pflops, price, tflops):
    total_tflops = sum(tflops)
    # Each card's share of the contract, as scheduler/pricing.py sets it.
    shares = [(pflops * tf / total_tflops).quantize(UNIT_PLACES) for tf in tflops]
    assert off_by(sum(shares), pflops) <= len(shares) * HALF_ULP
    if len(set(tflops)) == 1 and len(shares) in EXACT_SHARES:
        assert sum(shares) == pflops
    end = start + timedelta(days=365)
    with platform_clock(zone):
        cards = [charged("pflops_year", start, end, share, price, cut=month_parts) for share in shares]
    amount = sum(c.amount for c in cards)
    quantity = sum(c.quantity for c in cards)
    # Each card's year is rounded at the ends of its (up to 13) month parts; the shares at 12 places.
    bound = sum(c.months for c in cards) * ULP + abs(sum(shares) - pflops) * price
    assert off_by(amount, pflops * price) <= bound
    assert off_by(quantity, pflops) <= sum(c.months for c in cards) * ULP + abs(sum(shares) - pflops)
    if half_cent_distance(pflops * price) > bound:
        assert rating.to_money(amount) == rating.to_money(pflops * price)


# --- database: the real meter and close_period ----------------------------------------------------------------


@pytest.mark.django_db
@DB
@given(
    zone_month=st.sampled_from(
        [
            ("Asia/Shanghai", "2026-04"),
            ("Asia/Shanghai", "2028-02"),
            ("Europe/Berlin", "2027-03"),
            ("Europe/Berlin", "2027-10"),
            ("America/New_York", "2027-11"),
        ]
    ),
    gpus=st.integers(1, 3),  # 3: card shares that are not exact at 12 places (the pure tests take 1..16)
    price=cent_prices,
)
def test_close_period_bills_a_server_held_all_month_exactly_its_monthly_price(zone_month, gpus, price):
    zone, label = zone_month
    with platform_clock(zone) as tz, rolled_back():
        customer = OrganizationFactory(currency="USD")
        online_server(gpus=gpus, offer={"server_month_price": price, "server_month_interruptible_price": None})
        period = invoicing.period_of(label)
        lease = services.lease_create(org=customer, plan="server_month", servers=1, end_at=period.end, now=period.start)
        after = period.end + HOUR
        assert invoicing.close_period(label, now=after) == {"invoices": 1, "statements": 1}

        hours = int((period.end - period.start).total_seconds()) // 3600
        records = UsageRecord.objects.filter(lease=lease)
        assert records.count() == gpus * hours
        assert set(records.values_list("seconds", flat=True)) == {D(3600)}
        assert all(r.slot_start.astimezone(tz).minute == 0 for r in records)
        invoice = Invoice.objects.get(organization=customer)
        line = invoice.lines.get()
        assert line.amount == price and invoice.subtotal == price and invoice.total == price
        assert line.quantity == 1
        assert off_by(line.exact_amount, price) <= gpus * (price + 1) * HALF_ULP
        # What the customer watched live is what they are invoiced.
        assert metering.lease_usage(lease=lease, now=after).amount == price


DST_CHANGES = [
    ("Europe/Berlin", datetime(2027, 3, 28, 1, tzinfo=UTC)),
    ("Europe/Berlin", datetime(2027, 10, 31, 1, tzinfo=UTC)),
    ("America/New_York", datetime(2027, 3, 14, 7, tzinfo=UTC)),
    ("America/New_York", datetime(2027, 11, 7, 6, tzinfo=UTC)),
]


@pytest.mark.django_db
@DB
@given(
    change=st.sampled_from(DST_CHANGES),
    begin=st.integers(-3 * 3600, 3 * 3600),
    length=st.integers(1, 8 * 3600),
)
@example(change=DST_CHANGES[1], begin=-1800, length=3 * 3600)  # starts in the first of the two 02:00 hours
def test_metering_cuts_held_time_across_a_dst_change_into_whole_hours_none_lost_or_doubled(change, begin, length):
    zone, instant = change
    start = instant + timedelta(seconds=begin)
    end = start + timedelta(seconds=length)
    with platform_clock(zone) as tz, rolled_back():
        online_server(gpus=1, offer={"card_hour_price": D("3.6000"), "card_hour_interruptible_price": None})
        lease = services.lease_create(
            org=OrganizationFactory(currency="USD"), plan="card_hour", gpu_count=1, end_at=end, now=start
        )
        metering.meter(until=end + 2 * HOUR)
        records = list(UsageRecord.objects.filter(lease=lease).order_by("slot_start"))
        exact = exact_cost("card_hour", start, end, D(1), D("3.6"))

    assert records[0].start == start and records[-1].end == end
    assert all(
        a.end == b.start and b.slot_start - a.slot_start == HOUR for a, b in zip(records, records[1:], strict=False)
    )
    assert all(
        r.slot_start.astimezone(tz).minute == 0 and r.slot_start <= r.start < r.slot_start + HOUR for r in records
    )
    assert all(r.seconds == seconds(r.end - r.start) for r in records)
    assert all(r.seconds == 3600 for r in records[1:-1])
    assert sum(r.seconds for r in records) == length
    assert off_by(sum(r.amount for r in records), exact) <= ULP


# --- (b) totals are sums ---------------------------------------------------------------------------------------

MARCH = invoicing.Period(
    label="2026-03",
    start=datetime(2026, 2, 28, 16, tzinfo=UTC),  # 2026-03-01 00:00 in Asia/Shanghai
    end=datetime(2026, 3, 31, 16, tzinfo=UTC),
)
record_sets = st.lists(
    st.tuples(
        st.integers(0, 3),  # lease
        st.sampled_from([D("2.5"), D("2.75"), D("12000"), D("0.333333")]),  # unit price
        st.integers(1, 3600),  # seconds held
        st.floats(min_value=0, max_value=1),  # part of it down
        st.decimals(min_value=D(0), max_value=D("5000"), places=12),  # amount
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.django_db
@settings(parent=DB, max_examples=15)
@given(
    records=record_sets,
    tax_rate=st.sampled_from([D(0), D("0.06"), D("0.13"), D("0.2")]),
    take_rate=st.sampled_from([D("0.1"), D("0.15"), D("0.2")]),
)
def test_an_invoice_total_is_its_subtotal_less_credits_plus_tax_and_its_subtotal_the_sum_of_its_lines(
    records, tax_rate, take_rate
):
    with override_settings(SUANLI_TAX_RATE=tax_rate, SUANLI_TAKE_RATE=take_rate), rolled_back():
        customer = OrganizationFactory(currency="USD")
        server = online_server(gpus=4)
        gpus = list(server.gpus.order_by("index"))
        leases = [LeaseFactory(organization=customer, start_at=MARCH.start, end_at=MARCH.end) for _ in range(4)]
        allocations = [
            AllocationFactory(
                lease=lease, gpu=gpu, server=server, period=(MARCH.start, MARCH.end), unit_price=1, units=1
            )
            for lease, gpu in zip(leases, gpus, strict=True)
        ]
        for n, (lease, price, held, down, amount) in enumerate(records):
            slot = MARCH.start + n * HOUR
            UsageRecordFactory(
                allocation=allocations[lease],
                lease=leases[lease],
                organization=customer,
                provider=server.organization,
                server=server,
                plan="card_hour",
                slot_start=slot,
                start=slot,
                end=slot + timedelta(seconds=held),
                seconds=held,
                down_seconds=(D(held) * D(down)).quantize(D("0.000001")),
                units=1,
                unit_price=price,
                currency="USD",
                quantity=D(held) / 3600,
                amount=amount,
            )
        invoice = invoicing.invoice_build(org_id=customer.pk, currency="USD", period=MARCH, now=MARCH.end)
        invoicing.statements_build(period=MARCH)
        lines = list(invoice.lines.all())
        statement = ProviderStatement.objects.get(organization=server.organization)

    groups: dict[tuple[int, Decimal], Decimal] = {}
    for lease, price, _held, _down, amount in records:
        key = (leases[lease].pk, price)
        groups[key] = groups.get(key, D(0)) + amount
    assert {(line.lease_id, line.unit_price): line.exact_amount for line in lines} == groups
    assert all(line.amount == rating.to_money(line.exact_amount) for line in lines)
    assert all(0 <= line.sla_credit <= line.amount for line in lines)
    assert invoice.subtotal == sum(line.amount for line in lines)
    assert invoice.credits == sum(line.sla_credit for line in lines)
    assert invoice.tax == rating.to_money((invoice.subtotal - invoice.credits) * tax_rate)
    assert invoice.total == invoice.subtotal - invoice.credits + invoice.tax
    assert invoice.state == ("open" if invoice.total > 0 else "paid")
    # The provider's gross is the same usage, rounded once for the statement: a half cent a line apart at most.
    assert statement.gross == rating.to_money(sum(groups.values()))
    assert abs(statement.gross - invoice.subtotal) <= D("0.005") * (len(lines) + 1)
    assert statement.commission == rating.to_money(statement.gross * take_rate)
    assert statement.credits == invoice.credits  # SLA credits are charged back to the provider
    assert statement.net == statement.gross - statement.commission - statement.credits
