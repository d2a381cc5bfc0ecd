"""Storage billing, property-tested against an independent model (issue 16).

Random volume lives (made at random instants within two calendar months of the platform clock, wiped or not at a
random later instant, random sizes and prices per GB-month; a third of them never made by their agent, so never
billed), random meter runs (`meter(until=...)` at random
instants, some lagging behind earlier runs, so untils repeat and go backwards) and a close of the first month at a
random instant after it, all replayed in the order they happen. Then, per volume:

- its StorageRecords' [start, end) tile its life up to the last meter watermark: no gap, no overlap, one record per
  platform-clock hour slot;
- what they bill in each calendar month is size_gb x price x (its seconds alive in that month / the month's seconds),
  computed here with fractions, to the 12th decimal;
- the first month's invoice has one storage line per volume alive in it, of that amount to the cent.

The model shares nothing with billing/rating.py or the metering SQL but the definition of a calendar month.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing import invoicing, metering
from billing.models import Invoice, StorageRecord
from tests.factories import OrganizationFactory, online_server
from workloads.models import Volume

D = Decimal
HOUR = timedelta(hours=1)
ULP = D("1e-12")
CENT = D("0.01")

# (platform time zone, first month): months of 28..31 days, one with a DST change in each zone that has one.
CLOCKS = [
    ("Asia/Shanghai", 2026, 2),
    ("Asia/Shanghai", 2026, 3),
    ("Europe/Berlin", 2027, 3),
    ("Europe/Berlin", 2027, 10),
    ("America/New_York", 2027, 11),
    ("Asia/Kolkata", 2028, 1),  # half-hour offset: the platform's hours start at :30 UTC
]

FAST = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HEAVY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def months_of(zone: ZoneInfo, year: int, month: int) -> list[tuple[datetime, datetime]]:
    """The first month and the next, [start, end) as UTC instants, from wall-clock midnights in `zone`."""
    bounds = []
    for y, m in ((year, month), (year + month // 12, month % 12 + 1), (year + (month + 1) // 12, (month + 1) % 12 + 1)):
        bounds.append(datetime(y, m, 1, tzinfo=zone).astimezone(UTC))
    return [(bounds[0], bounds[1]), (bounds[1], bounds[2])]


@dataclass(frozen=True)
class Life:
    born: int  # microseconds after the first month's start
    lasts: int | None  # microseconds until it is wiped, None for never (within the two months)
    size_gb: int
    price: Decimal
    made: bool = True  # False: its agent never makes it (it fails, or is given up): never billed


@dataclass(frozen=True)
class Run:
    at: int  # microseconds after the first month's start: when the meter runs
    lag: int  # microseconds its `until` lags behind `at` (0 to two days: behind earlier runs too)


MICRO = 1_000_000
SPAN = 62 * 86400 * MICRO  # at least two months; an instant past the second month's end is dropped

lives = st.builds(
    Life,
    born=st.integers(0, SPAN),
    lasts=st.one_of(st.none(), st.integers(1, SPAN), st.integers(1, 3 * 3600 * MICRO)),
    size_gb=st.integers(1, 100_000),
    price=st.decimals(min_value=D("0.0001"), max_value=D("999.9999"), places=4),
    made=st.sampled_from([True, True, False]),
)
runs = st.builds(
    Run,
    at=st.integers(0, SPAN),
    lag=st.one_of(st.just(0), st.integers(0, 3 * 3600 * MICRO), st.integers(0, 2 * 86400 * MICRO)),
)


@contextmanager
def scenario(zone: str) -> Iterator[ZoneInfo]:
    """One example's platform clock and rows, undone before the next example."""
    with override_settings(PLATFORM_TIME_ZONE=zone), transaction.atomic():
        yield ZoneInfo(zone)
        transaction.set_rollback(True)


def micro(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * MICRO + delta.microseconds


def exact_bill(
    size_gb: int, price: Decimal, start: datetime, end: datetime, month: tuple[datetime, datetime]
) -> Fraction:
    """size x price x (seconds of [start, end) inside `month` / the month's seconds), exactly."""
    lo, hi = max(start, month[0]), min(end, month[1])
    if lo >= hi:
        return Fraction(0)
    return Fraction(size_gb) * Fraction(price) * Fraction(micro(hi - lo), micro(month[1] - month[0]))


def cents(amount: Fraction) -> Decimal:
    """An exact amount rounded half-up to the cent."""
    with localcontext() as context:
        context.prec = 80
        return (D(amount.numerator) / D(amount.denominator)).quantize(CENT, rounding=ROUND_HALF_UP)


def replay(clock: tuple[str, int, int], volume_lives: list[Life], meter_runs: list[Run], close_after: int) -> None:
    zone_name, year, month = clock
    with scenario(zone_name) as zone:
        first, second = months_of(zone, year, month)
        origin, horizon = first[0], second[1]
        customer = OrganizationFactory(currency="USD")
        server = online_server(gpus=1, offer={"storage_gb_month_price": D("0.1000")})
        close_at = first[1] + timedelta(microseconds=close_after % micro(second[1] - second[0]))

        # Every event in the order it happens; at one instant a volume is made, then wiped, then metered, then closed.
        events: list[tuple[datetime, int, object]] = []
        for index, life in enumerate(volume_lives):
            born = origin + timedelta(microseconds=life.born)
            if born >= horizon:
                continue
            events.append((born, 0, ("make", index, life)))
            if life.lasts is not None and born + timedelta(microseconds=life.lasts) < horizon:
                events.append((born + timedelta(microseconds=life.lasts), 1, ("wipe", index, None)))
        for run in meter_runs:
            at = origin + timedelta(microseconds=run.at)
            if at < horizon:
                events.append((at, 2, ("meter", at - timedelta(microseconds=run.lag), None)))
        events.append((close_at, 3, ("close", None, None)))
        events.sort(key=lambda event: (event[0], event[1]))

        volumes: dict[int, Volume] = {}
        spans: dict[int, tuple[datetime, datetime | None]] = {}
        made: dict[int, bool] = {}
        for at, _order, (kind, arg, life) in events:
            if kind == "make":
                volumes[arg] = Volume.objects.create(
                    organization=customer,
                    server=server,
                    name=f"v{arg}",
                    size_gb=life.size_gb,
                    state="ready" if life.made else "creating",
                    price_per_gb_month=life.price,
                    currency="USD",
                    created_at=at,
                    ready_at=at if life.made else None,  # made by its agent at once, or never
                )
                made[arg] = life.made
                spans[arg] = (at, None)
            elif kind == "wipe":
                Volume.objects.filter(pk=volumes[arg].pk).update(state="wiped", wiped_at=at)
                spans[arg] = (spans[arg][0], at)
            elif kind == "meter":
                metering.meter(until=arg)  # never past `at`: a slot is metered once it is over
            else:
                invoicing.close_period(f"{year:04d}-{month:02d}", now=at)

        watermark = metering.metered_until()
        assert watermark is not None and watermark >= first[1]  # the close metered the first month at least
        invoice = Invoice.objects.filter(organization=customer).first()
        lines = {line.volume_id: line for line in invoice.lines.all()} if invoice else {}

        for index, volume in volumes.items():
            born, wiped = spans[index]
            billed_to = min(wiped, watermark) if wiped else watermark
            records = list(StorageRecord.objects.filter(volume=volume).order_by("start"))
            if not made[index]:  # never made (then given up, or still waiting): nothing billed, ever
                assert records == [] and volume.pk not in lines
                continue

            # (1) The records tile [born, billed_to): each second once, one record per hour slot.
            if born >= billed_to:
                assert records == []
            else:
                assert records[0].start == born and records[-1].end == billed_to
                assert all(a.end == b.start for a, b in zip(records, records[1:], strict=False))
                assert all(r.slot_start <= r.start < r.end <= r.slot_start + HOUR for r in records)
                assert all(r.slot_start.astimezone(zone).minute == 0 for r in records)
                assert len({r.slot_start for r in records}) == len(records)
                assert all(r.seconds == D(micro(r.end - r.start)).scaleb(-6) for r in records)
                assert all(
                    (r.size_gb, r.unit_price, r.currency) == (volume.size_gb, volume.price_per_gb_month, "USD")
                    for r in records
                )

            # (2) Each month's records bill size x price x its share of the month, to the 12th decimal.
            for bounds in (first, second):
                expected = exact_bill(volume.size_gb, volume.price_per_gb_month, born, billed_to, bounds)
                billed = sum((r.amount for r in records if bounds[0] <= r.slot_start < bounds[1]), D(0))
                assert abs(Fraction(billed) - expected) <= Fraction(ULP), (index, bounds, billed, expected)

            # (3) The first month's invoice line: the month's whole life of the volume (the close metered all of
            # it), to the cent.
            in_first = exact_bill(volume.size_gb, volume.price_per_gb_month, born, wiped or horizon, first)
            if in_first == 0:
                assert volume.pk not in lines
            else:
                line = lines[volume.pk]
                assert (line.plan, line.unit_price) == ("storage", volume.price_per_gb_month)
                assert line.seconds == D(micro(min(wiped or first[1], first[1]) - max(born, first[0]))).scaleb(-6)
                assert line.amount == cents(in_first), (index, line.amount, in_first)
        assert set(lines) <= {volume.pk for volume in volumes.values()}
        if invoice:
            storage = sum((line.amount for line in lines.values()), D(0))
            assert invoice.subtotal == storage  # no lease: the storage lines are the whole invoice


@pytest.mark.django_db
@FAST
@given(
    clock=st.sampled_from(CLOCKS),
    volume_lives=st.lists(lives, min_size=1, max_size=3),
    meter_runs=st.lists(runs, max_size=4),
    close_after=st.integers(0, 30 * 86400 * MICRO),
)
@example(  # made mid-month, wiped in the next one; runs repeat and go backwards; the close comes late
    clock=CLOCKS[1],
    volume_lives=[Life(born=4 * 86400 * MICRO + 12_345, lasts=40 * 86400 * MICRO, size_gb=31, price=D("0.2400"))],
    meter_runs=[
        Run(at=10 * 86400 * MICRO, lag=0),
        Run(at=10 * 86400 * MICRO, lag=0),
        Run(at=11 * 86400 * MICRO, lag=2 * 86400 * MICRO),
    ],
    close_after=20 * 86400 * MICRO,
)
def test_storage_is_billed_once_per_volume_second_at_size_times_price_per_month_share(
    clock, volume_lives, meter_runs, close_after
):
    replay(clock, volume_lives, meter_runs, close_after)


@pytest.mark.slow
@pytest.mark.django_db
@HEAVY
@given(
    clock=st.sampled_from(CLOCKS),
    volume_lives=st.lists(lives, min_size=1, max_size=6),
    meter_runs=st.lists(runs, max_size=10),
    close_after=st.integers(0, 30 * 86400 * MICRO),
)
def test_storage_is_billed_once_per_volume_second_many_lives_and_runs(clock, volume_lives, meter_runs, close_after):
    replay(clock, volume_lives, meter_runs, close_after)
