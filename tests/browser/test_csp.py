"""Pages under the Content-Security-Policy in a real browser: what the flows do not visit (Swagger UI, the admin,
suanli.js switching the plan fields of an offer and opening the menu) runs with no violation (open_as fails a page
on one)."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import PHONE
from tests.factories import UserFactory, online_server

pytestmark = pytest.mark.django_db(transaction=True)


def _no_page_errors(page) -> None:
    assert page.errors == [], page.errors


def test_swagger_ui_lists_the_api_under_the_policy(open_as):
    page = open_as()
    page.goto("/api/docs/")
    page.locator("#swagger-ui .opblock").first.wait_for()
    page.get_by_text("Suanli API").first.wait_for()
    _no_page_errors(page)


def test_the_admin_opens_under_the_policy(open_as):
    page = open_as(UserFactory(is_staff=True, is_superuser=True))
    page.goto("/admin/")
    page.locator("#content").wait_for()
    page.goto("/admin/accounts/organization/add/")
    page.locator("form#organization_form").wait_for()
    _no_page_errors(page)


def test_the_fields_of_the_chosen_plan_show_and_the_menu_opens_without_eval(open_as, alice, bob):
    server = online_server(organization=bob.org, gpus=8, name="bob-csp-01")
    page = open_as(alice.user, viewport=PHONE)
    page.goto(f"/offers/{server.offers.get().pk}/")
    card_hour = page.locator('fieldset[data-plan="card_hour"]')
    server_month = page.locator('fieldset[data-plan="server_month"]')
    card_hour.wait_for(state="visible")
    assert server_month.is_hidden()
    page.locator('#rent-plan input[value="server_month"]').check()
    server_month.wait_for(state="visible")
    card_hour.wait_for(state="hidden")

    menu = page.get_by_role("button", name="Menu")
    assert menu.get_attribute("aria-expanded") == "false"
    menu.click()
    page.locator("#site-menu").get_by_role("link", name=re.compile("My leases")).wait_for()
    assert menu.get_attribute("aria-expanded") == "true"
    _no_page_errors(page)
