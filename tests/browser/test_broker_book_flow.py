"""A broker's book in a real browser (issue 20), in English and Chinese.

The broker holds two 2-card servers of two providers by the month and has resold some of their cards by the hour
(tests/billing/resale_support.py writes the resale leases as the scheduler leaves them); the meter has run. Its owner
opens the book from the dashboard, reads the month so far, narrows it to two days with the form, and reads it again
in Chinese, where a backwards range is refused beside the field. A renter's dashboard has no link to a book, and its
book (it holds no contract) says so. On a phone the page needs no sideways scrolling.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine

from billing.metering import meter
from tests.billing.resale_support import Segment, broker_world, resale_rows
from tests.browser.conftest import PHONE, fits_the_screen, screenshot
from tests.conftest import make_persona

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
DAY = 86400


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


def test_a_broker_reads_its_book_in_english_and_chinese(open_as):
    world = broker_world()
    segments = [
        Segment(card=0, start=0, end=DAY, lease=0),
        Segment(card=1, start=DAY // 2, end=DAY, lease=0),
        Segment(card=2, start=DAY, end=DAY + 7200, lease=1),
    ]
    resale_rows(world, segments, {(0, 0): D("2.5"), (1, 1): D("4.75")})
    midnight = world.period.start + timedelta(days=2)  # 2026-03-03 00:00 in Shanghai
    owner = make_persona(world.broker)
    renter = make_persona(world.renters[0])
    with time_machine.travel(midnight, tick=False) as clock:
        meter(until=midnight)
        clock.move_to(midnight + timedelta(hours=1))
        page = open_as(owner.user)
        page.goto("/dashboard/")
        page.click("#broker-book-link")
        page.wait_for_url("**/broker/")
        assert _text(page, "h1") == "Broker's book"
        # The month so far: 4 cards for 49 hours; 38 card-hours resold.
        assert _text(page, "#held-hours") == "196.0"
        assert _text(page, "#resold-hours") == "38.0"
        assert _text(page, "#resold-share") == "19.4%"
        assert page.locator("#contracts tbody tr").count() == 2
        assert page.locator("#days tbody tr").count() == 3
        screenshot(page, "broker-book-en")

        page.fill("#id_from", "2026-03-01")
        page.fill("#id_to", "2026-03-02")
        page.click("#book-form button[type=submit]")
        page.wait_for_url("**/broker/?from=2026-03-01&to=2026-03-02")
        assert _text(page, "#held-hours") == "192.0"
        assert _text(page, "#resold-share") == "19.8%"
        money = _text(page, "#book-money-USD")
        assert "USD 99.50" in money and "USD 14.93" in money  # revenue, 15 % commission
        first = _text(page, f"#contract-{world.contracts[0].pk}")
        assert "37.5%" in first and "USD 76.50" in first  # 90.00 less 13.50
        assert page.errors == []

        zh = open_as(owner.user, locale="zh-CN")
        zh.goto("/broker/?from=2026-03-01&to=2026-03-02")
        assert _text(zh, "h1") == "经纪账本"
        assert "已转售卡时" in _text(zh, "#book-summary") and "USD 99.50" in _text(zh, "#book-money-USD")
        assert "闲置卡" in _text(zh, "#days thead") and "毛利" in _text(zh, "#contracts thead")
        screenshot(zh, "broker-book-zh")
        zh.goto("/broker/?from=2026-03-05&to=2026-03-01")
        assert _text(zh, "#id_to_errors") == "须不早于起始日。"
        assert zh.errors == []

        phone = open_as(owner.user, viewport=PHONE)
        phone.goto("/broker/?from=2026-03-01&to=2026-03-02")
        assert fits_the_screen(phone)
        screenshot(phone, "broker-book-phone")

        other = open_as(renter.user)
        other.goto("/dashboard/")
        assert other.locator("#broker-book-link").count() == 0
        other.goto("/broker/")
        assert other.locator("#no-contracts").count() == 1
        assert "USD 99.50" not in other.content()
