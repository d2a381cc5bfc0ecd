"""The broker's book (issue 20): `GET /api/v1/broker/book/` and the page `/broker/`, linked from the dashboard.

A broker holding two servers by the month resells some of their cards; its book shows the held, resold and idle
cards and the money by contract and day, in English and Chinese. Another organisation's book never shows it (there is
no id to reach: each reads its own), and a bad range is a 400 in API.md's error shape, never a 500.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from billing.metering import meter
from tests.billing.resale_support import Segment, broker_world, resale_rows
from tests.conftest import make_persona
from tests.factories import OrganizationFactory

D = Decimal
DAY = 86400
pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    world = broker_world()
    segments = [
        Segment(card=0, start=0, end=DAY, lease=0),  # the 1st, all day, at 2.5/h: 60.00
        Segment(card=1, start=DAY // 2, end=DAY, lease=0),  # half of the 1st, same lease: 30.00
        Segment(card=2, start=DAY, end=DAY + 7200, lease=1),  # 2 hours on the 2nd at 4.75/h: 9.50
    ]
    prices = {(0, 0): D("2.5"), (1, 1): D("4.75")}
    resale_rows(world, segments, prices)
    now = world.period.start + timedelta(days=2)  # 2026-03-03 00:00 in Shanghai
    with time_machine.travel(now, tick=False):
        meter(until=now)
    world.now = now
    world.persona = make_persona(world.broker)
    return world


def _book(client, query: str = ""):
    return client.get(f"/api/v1/broker/book/{query}")


def test_the_api_shows_held_resold_idle_and_money_by_contract_and_day(world):
    with time_machine.travel(world.now + timedelta(hours=1), tick=False):
        response = _book(world.persona.api, "?from=2026-03-01&to=2026-03-02")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["from"], body["to"], body["time_zone"], body["take_rate"]) == (
        "2026-03-01",
        "2026-03-02",
        "Asia/Shanghai",
        "0.1500",
    )
    totals = body["totals"]
    assert D(totals["held_card_seconds"]) == 4 * 2 * DAY
    assert D(totals["resold_card_seconds"]) == DAY + DAY // 2 + 7200
    assert D(totals["idle_card_seconds"]) == 8 * DAY - (DAY + DAY // 2 + 7200)
    assert totals["resold_share"] == "0.1979"  # 136800 / 691200
    (usd,) = totals["money"]
    contracts_cost = D("9000.00") * 2 * 2 / 31  # two servers, two days of a 31-day month
    assert usd["resale_revenue"] == "99.50" and usd["commission"] == "14.93" and usd["resale_net"] == "84.57"
    assert D(usd["contract_cost"]) == contracts_cost.quantize(D("0.01"))
    assert D(usd["margin"]) == D("84.57") - D(usd["contract_cost"])
    first, second = body["contracts"]
    assert (first["lease"], first["plan"], first["cards"]) == (world.contracts[0].pk, "server_month", 2)
    assert D(first["resold_card_seconds"]) == DAY + DAY // 2 and first["resold_share"] == "0.3750"
    assert first["money"][0]["resale_revenue"] == "90.00"
    assert D(second["resold_card_seconds"]) == 7200 and second["money"][0]["resale_revenue"] == "9.50"
    day1, day2 = body["days"]
    assert (day1["date"], day1["held_cards"], day1["resold_cards"], day1["idle_cards"]) == (
        "2026-03-01",
        "4.00",
        "1.50",
        "2.50",
    )
    assert day1["money"][0]["resale_revenue"] == "90.00" and day2["money"][0]["resale_revenue"] == "9.50"
    assert (day2["held_cards"], day2["resold_cards"]) == ("4.00", "0.08")


def test_a_day_still_running_counts_up_to_now(world):
    with time_machine.travel(world.now + timedelta(hours=6), tick=False):
        body = _book(world.persona.api, "?from=2026-03-03&to=2026-03-03").json()
    (day,) = body["days"]
    assert D(day["held_card_seconds"]) == 4 * 6 * 3600 and day["held_cards"] == "4.00"
    assert day["money"] == []  # not metered yet
    assert body["metered_until"] is not None


def test_the_default_is_this_month_so_far(world):
    with time_machine.travel(world.now, tick=False):
        body = _book(world.persona.api).json()
    assert (body["from"], body["to"]) == ("2026-03-01", "2026-03-03")


def test_another_organisation_never_sees_the_broker_s_book(world):
    other = make_persona(OrganizationFactory())
    renter = make_persona(world.renters[0])
    with time_machine.travel(world.now, tick=False):
        for persona in (other, renter):
            body = _book(persona.api, "?from=2026-03-01&to=2026-03-02").json()
            assert body["contracts"] == [] and body["totals"]["money"] == []
            assert body["totals"]["held_card_seconds"] == "0.000000"
            assert all(d["money"] == [] and d["resold_card_seconds"] == "0.000000" for d in body["days"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?from=2026-03-05&to=2026-03-01", "to"),
        ("?from=2026-01-01&to=2026-12-31", "to"),
        ("?from=2026-13-01", "from"),
        ("?from=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-03-01", "from"),  # full-width digits
        ("?to=9999-12-31", "to"),
        ("?from=0001-01-01", "from"),
        ("?from=2026-03-01&extra=1", "extra"),
    ],
)
def test_a_bad_range_is_a_400_naming_the_field(world, query, field):
    with time_machine.travel(world.now, tick=False):
        response = _book(world.persona.api, query)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_signed_out_is_401(world):
    from rest_framework.test import APIClient

    assert _book(APIClient()).status_code == 401


def _page(world, language: str, query: str = "", persona=None):
    client = Client()
    client.force_login((persona or world.persona).user)
    with time_machine.travel(world.now + timedelta(hours=1), tick=False):
        return client.get(f"/broker/{query}", HTTP_ACCEPT_LANGUAGE=language)


def test_the_page_in_english(world):
    response = _page(world, "en", "?from=2026-03-01&to=2026-03-02")
    body = response.content.decode()
    assert response.status_code == 200
    assert "Broker&#x27;s book" in body or "Broker's book" in body
    assert f'id="contract-{world.contracts[0].pk}"' in body
    assert "Card-hours resold" in body and "38.0" in body  # 136800 s
    assert "19.8%" in body and "USD\u00a099.50" in body and "USD\u00a014.93" in body
    assert "2026-03-02" in body and "Resale statements" in body


def test_the_page_in_chinese(world):
    response = _page(world, "zh-hans", "?from=2026-03-01&to=2026-03-02")
    body = response.content.decode()
    assert response.status_code == 200
    assert "经纪账本" in body and "已转售卡时" in body and "闲置卡" in body and "毛利" in body
    assert "USD\u00a099.50" in body


def test_the_page_refuses_a_bad_range_beside_the_field(world):
    response = _page(world, "en", "?from=2026-03-05&to=2026-03-01")
    assert response.status_code == 400
    assert 'id="id_to_errors"' in response.content.decode()
    response = _page(world, "zh-hans", "?from=nonsense")
    assert response.status_code == 400 and 'id="id_from_errors"' in response.content.decode()


def test_the_dashboard_links_the_book_only_for_organisations_that_hold_contracts(world):
    client = Client()
    client.force_login(world.persona.user)
    assert 'id="broker-book-link"' in client.get("/dashboard/").content.decode()
    renter = make_persona(world.renters[0])
    client.force_login(renter.user)
    assert 'id="broker-book-link"' not in client.get("/dashboard/").content.decode()
    response = _page(world, "en", persona=renter)
    assert response.status_code == 200 and 'id="no-contracts"' in response.content.decode()
