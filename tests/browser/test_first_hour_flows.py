"""Pages that misled a new user (issue 17, "Pages that mislead"), in a real browser and in both languages, with
screenshots kept in var/screenshots/ (SUANLI_SCREENSHOTS; see conftest.py): staff land on their home and reach
every staff page from the header, and a month closed with nothing to bill is listed as closed; a user with two
organisations always sees which one they act for, switches explicitly, and follows a link into the other; a
pending provider's dashboard says what to do; the sign-up page says what waits for verification."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from billing.invoicing import previous_period
from tests.browser.conftest import screenshot
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

LANGUAGES = [("en-GB", "en"), ("zh-CN", "zh-hans")]
WORDS = {
    "en": {
        "staff": "Staff",
        "fleet": "Fleet",
        "catalogue": "GPU catalogue",
        "close": "Close a month",
        "reconciliation": "Reconciliation",
        "month": "Month (YYYY-MM)",
        "close_button": "Close the month",
        "none_closed": "No month has been closed yet.",
    },
    "zh-hans": {
        "staff": "平台管理",
        "fleet": "集群总览",
        "catalogue": "GPU 目录",
        "close": "月度结账",
        "reconciliation": "对账",
        "month": "月份（YYYY-MM）",
        "close_button": "结账",
        "none_closed": "还没有结账的月份。",
    },
}


def _no_page_errors(page) -> None:
    assert page.errors == [], page.errors


# --- staff ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "language"), LANGUAGES)
def test_staff_land_on_their_home_reach_every_staff_page_from_the_header_and_see_the_month_they_closed(
    open_as, locale, language
):
    words = WORDS[language]
    ops = UserFactory(email=f"ops-{language}@example.com", is_staff=True)
    OrganizationFactory(name="Waiting GPU Co", kind="provider", status="pending")
    page = open_as(ops, locale=locale)
    page.goto("/dashboard/")
    page.wait_for_url(re.compile(r"/staff/$"))
    page.get_by_text("Waiting GPU Co").wait_for()
    screenshot(page, f"first-hour-staff-home-{language}")

    menu = page.locator("#staff-menu")
    for name, path in [
        ("fleet", "/staff/fleet/"),
        ("catalogue", "/staff/catalogue/"),
        ("reconciliation", "/staff/reconciliation/"),
        ("close", "/staff/close-period/"),
    ]:
        menu.locator("summary").click()
        menu.get_by_role("link", name=words[name], exact=True).click()
        page.wait_for_url(re.compile(re.escape(path) + "$"))
    page.get_by_text(words["none_closed"]).wait_for()

    label = previous_period(timezone.now()).label
    page.get_by_label(words["month"]).fill(label)
    page.get_by_role("button", name=words["close_button"]).click()
    page.wait_for_url(re.compile(r"/staff/close-period/\?closed="))
    page.locator("#closed-periods").get_by_role("rowheader", name=label).wait_for()
    assert page.get_by_text(words["none_closed"]).count() == 0
    screenshot(page, f"first-hour-staff-closed-{language}")
    _no_page_errors(page)
