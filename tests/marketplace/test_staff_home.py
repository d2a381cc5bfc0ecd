"""Staff land on a staff home that links every staff page (issue 17: 'Staff land on "You do not belong to any
organisation yet"'), and a month closed with nothing to bill is listed as closed (issue 17: 'closing 2026-11 says
"closed" beside "No month has been closed yet"')."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import time_machine

from billing.invoicing import close_period, closed_periods
from billing.models import PeriodClose
from tests.factories import OrganizationFactory, UserFactory

STAFF_LINKS = [
    "/staff/",
    "/staff/fleet/",
    "/staff/catalogue/",
    "/staff/close-period/",
    "/staff/reconciliation/",
    "/staff/#pending-title",
    "/admin/billing/payout/",
    "/admin/",
]


@pytest.fixture
def staff_alone(db):
    """A staff account that belongs to no organisation (how an operator's account starts)."""
    return UserFactory(email="ops@example.com", is_staff=True)


def _menu(body: str) -> str:
    start = body.index('id="staff-menu"')
    return body[start : body.index("</details>", start)]


def test_staff_without_an_organisation_land_on_the_staff_home(client, staff_alone):
    OrganizationFactory(name="Pending Provider", kind="provider", status="pending")
    client.force_login(staff_alone)
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response["Location"] == "/staff/"
    body = client.get("/staff/").content.decode()
    assert "You do not belong to any organisation yet" not in body
    assert "Pending Provider" in body and 'action="/org/' in body  # approve from here
    for href in STAFF_LINKS:
        assert f'href="{href}' in _menu(body), href


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_every_page_of_staff_has_the_staff_menu_in_its_header(client, staff, language):
    client.force_login(staff.user)
    for path in ["/dashboard/", "/offers/", "/staff/fleet/"]:
        body = client.get(path, HTTP_ACCEPT_LANGUAGE=language).content.decode()
        menu = _menu(body)
        for href in STAFF_LINKS:
            assert f'href="{href}' in menu, (path, href)
        if language == "zh-hans":  # every word of the menu in Chinese
            assert not re.search(r">[A-Za-z][A-Za-z ]+<", menu), menu


def test_nobody_else_has_a_staff_menu_or_home(client, alice):
    client.force_login(alice.user)
    assert 'id="staff-menu"' not in client.get("/dashboard/").content.decode()
    assert client.get("/staff/").status_code == 403


def test_a_month_that_billed_nobody_is_listed_as_closed(client, staff):
    with time_machine.travel(datetime(2026, 12, 7, 12, tzinfo=UTC), tick=False):
        client.force_login(staff.user)
        before = client.get("/staff/close-period/").content.decode()
        assert "No month has been closed yet." in before
        response = client.post("/staff/close-period/", {"period": "2026-11"}, follow=True)
        body = response.content.decode()
    assert "2026-11 is closed: 0 new invoices, 0 new provider statements." in body
    assert "No month has been closed yet." not in body
    table = body[body.index('id="closed-periods"') :]
    assert '<th scope="row">2026-11</th>' in table
    row = PeriodClose.objects.get(period="2026-11")
    assert (row.invoices, row.statements) == (0, 0)


def test_closing_again_keeps_one_record_per_month(db):
    with time_machine.travel(datetime(2026, 12, 7, 12, tzinfo=UTC), tick=False):
        close_period("2026-10")
        close_period("2026-10")
        close_period("2026-11")
    assert PeriodClose.objects.count() == 2
    assert [p["period"] for p in closed_periods()] == ["2026-11", "2026-10"]
