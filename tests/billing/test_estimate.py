"""`billing.rating.estimate`, the one price estimate before a lease exists (the rent form's): the figures of the
plain formulas it replaced, and what metering would charge for the same held time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from billing import rating

D = Decimal
ZONE = ZoneInfo("Asia/Shanghai")
prices = st.decimals(min_value=D("0.000001"), max_value=D("100000"), places=6)
starts = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))  # noqa: DTZ001
spans = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=800)).map(
    lambda d: timedelta(seconds=int(d.total_seconds()))
)
PURE = settings(max_examples=60, deadline=None)


def months_between(start: datetime, end: datetime) -> Decimal:
    """The rent form's former count of server-months: each second pro-rated over its calendar month."""
    total, cursor = D(0), start
    while cursor < end:
        month_start, month_end = rating.month_bounds(cursor, ZONE)
        part_end = min(end, month_end)
        total += D((part_end - cursor).total_seconds()) / D((month_end - month_start).total_seconds())
        cursor = part_end
    return total


@PURE
@given(price=prices, cards=st.integers(1, 16), start=starts, span=spans)
def test_a_card_hour_estimate_is_price_times_cards_times_hours(price, cards, start, span):
    figure = rating.estimate(
        plan="card_hour", unit_price=price, units=D(cards), start=start, end=start + span, zone=ZONE
    )
    hours = D(span.total_seconds()) / 3600
    assert figure.amount == rating.to_money(price * cards * hours)
    assert figure.duration.quantize(D("0.01")) == hours.quantize(D("0.01"))


@PURE
@given(price=prices, start=starts, span=spans)
def test_a_server_month_estimate_counts_each_second_against_its_own_month(price, start, span):
    figure = rating.estimate(
        plan="server_month", unit_price=price, units=D(1), start=start, end=start + span, zone=ZONE
    )
    months = months_between(start, start + span)
    assert figure.amount == rating.to_money(price * months)
    assert figure.duration.quantize(D("0.001")) == months.quantize(D("0.001"))


@PURE
@given(price=prices, pflops=st.decimals(min_value=D("0.001"), max_value=D("1000"), places=3), start=starts, span=spans)
def test_a_pflops_year_estimate_is_over_years_of_365_days(price, pflops, start, span):
    figure = rating.estimate(
        plan="pflops_year", unit_price=price, units=pflops, start=start, end=start + span, zone=ZONE
    )
    years = D(span.total_seconds()) / rating.YEAR_SECONDS
    assert figure.amount == rating.to_money(price * pflops * years)


def test_a_whole_calendar_month_of_a_server_is_its_monthly_price():
    start, end = rating.month_bounds(datetime(2028, 2, 10, tzinfo=UTC), ZONE)
    figure = rating.estimate(plan="server_month", unit_price=D("12345.67"), units=D(1), start=start, end=end, zone=ZONE)
    assert figure == rating.Estimated(duration=D(1), amount=D("12345.67"))


def test_nothing_held_costs_nothing():
    at = datetime(2027, 5, 1, tzinfo=UTC)
    assert rating.estimate(plan="card_hour", unit_price=D(3), units=D(8), start=at, end=at).amount == 0
