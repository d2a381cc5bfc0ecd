"""A prepaid customer's money in a real browser: it pays in by bank transfer, rents a card, watches its month to
date rise on /balance/, is warned by the banner when the money runs low, sees its lease ended for want of funds,
tops up again, and after the month is closed finds the invoice paid from its balance.

The clock is time_machine's (process-wide, so the live server's thread sees it too), standing at a fixed instant
on the last day of a month; the funds job and the month's close run in the test's thread at the moved clock, as
the beat would run them. Money comes in by bank transfer (`billing.ledger.adjustment_record`, what staff record):
Stripe.js's payment element cannot be driven against the fake Stripe (localstripe serves the API, not js.stripe.com,
which the browser here cannot reach), so the card top-up is covered by the page tests in
tests/billing/test_balance_pages.py up to the payment element, and by tests/billing/test_topups.py after it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing import invoicing, ledger
from billing.funds import funds_check
from billing.models import Invoice
from scheduler.models import Lease
from tests.browser.conftest import screenshot
from tests.factories import online_server

pytestmark = pytest.mark.django_db(transaction=True)

# 2026-12-31 16:00 in Asia/Shanghai (the platform clock): eight hours before December closes.
START = datetime(2026, 12, 31, 8, 0, tzinfo=UTC)


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


def test_a_prepaid_customer_spends_its_balance_is_stopped_tops_up_and_the_invoice_is_paid_from_it(
    open_as, alice, bob, settings
):
    settings.SUANLI_TAX_RATE = Decimal(0)
    settings.SUANLI_FUNDS_NOTICE_SECONDS = 3600
    settings.STRIPE_PUBLISHABLE_KEY = ""
    with time_machine.travel(START, tick=False) as clock:
        ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency="USD")
        ledger.adjustment_record(org=alice.org, amount="10.00", currency="USD", reference="BANK-DEC-1")
        server = online_server(organization=bob.org, offer={"card_hour_price": Decimal("2.0000")}, name="bob-b1")
        offer = server.offers.get()
        page = open_as(alice.user)

        page.goto("/balance/")
        assert _text(page, "#figure-balance strong") == "USD 10.00"
        assert _text(page, "#figure-month-to-date strong") == "USD 0.00"
        assert _text(page, "#balance-mode") == "Prepaid"
        assert "Online payment is not configured on this site." in _text(page, "#top-up")

        # Rent one card (2.00 an hour) from the storefront.
        page.goto(f"/offers/{offer.pk}/")
        form = page.locator("#rent-form")
        form.wait_for()
        form.get_by_label(re.compile(r"cards|GPUs", re.IGNORECASE)).first.fill("1")
        form.locator('button[type="submit"]').first.click()
        page.wait_for_url(re.compile(r"/leases/\d+/"))
        lease = Lease.objects.get(organization=alice.org)

        # An hour later, then three: the month to date rises, the money runs out at 13:00 UTC.
        clock.move_to(START + timedelta(hours=1))
        page.goto("/balance/")
        assert _text(page, "#figure-month-to-date strong") == "USD 2.00"
        assert _text(page, "#figure-burn strong") == "USD 2.00 an hour"
        clock.move_to(START + timedelta(hours=3))
        page.reload()
        assert _text(page, "#figure-month-to-date strong") == "USD 6.00"
        assert _text(page, "#figure-available strong") == "USD 4.00"
        assert page.locator("#figure-runs-out time").get_attribute("datetime") == "2026-12-31T13:00:00+00:00"
        assert page.locator(f"#balance-lease-{lease.pk}").get_by_role("link").get_attribute("href") == (
            f"/leases/{lease.pk}/"
        )
        assert page.locator("#daily-chart rect").count() == 31
        assert page.locator("#funds-banner").count() == 0
        screenshot(page, "balance")

        # Less than an hour left: the funds job warns, and every page carries the banner.
        clock.move_to(START + timedelta(hours=4, minutes=10))
        assert funds_check()["notified"] == 1
        page.goto("/leases/")
        banner = page.locator("#funds-banner")
        assert "Your balance runs out at" in banner.inner_text()
        banner.get_by_role("link", name="Top up").click()
        page.wait_for_url(re.compile(r"/balance/#top-up$"))

        # Out of money and the notice an hour old: the card-hour lease ends with funds_exhausted.
        clock.move_to(START + timedelta(hours=5, minutes=15))
        assert funds_check()["stopped"] == 1
        page.goto(f"/leases/{lease.pk}/")
        assert _text(page, "#lease-end-reason").startswith("Ended: funds exhausted")
        assert "Your card-hour leases were stopped: funds exhausted." in _text(page, "#funds-banner")
        lease.refresh_from_db()
        assert (lease.state, lease.end_reason) == ("ended", "funds_exhausted")
        page.goto("/balance/")
        assert _text(page, "#figure-month-to-date strong") == "USD 10.50"  # 5 h 15 min of 2.00
        assert _text(page, "#figure-runs-out strong") == "Now: nothing is left to spend"
        screenshot(page, "balance-stopped")

        # The customer pays in again by bank transfer; the month closes; its invoice is paid from the balance.
        ledger.adjustment_record(org=alice.org, amount="5.00", currency="USD", reference="BANK-DEC-2")
        clock.move_to(START + timedelta(hours=8, minutes=30))  # 2027-01-01 00:30 platform time
        invoicing.close_period("2026-12")
        invoice = Invoice.objects.get(organization=alice.org, period="2026-12")
        assert invoice.state == "paid" and invoice.total == Decimal("10.50")
        page.goto(f"/invoices/{invoice.pk}/")
        assert page.locator(".invoice-state-paid").inner_text().strip() == "Paid"
        page.goto("/balance/")
        assert _text(page, "#figure-balance strong") == "USD 4.50"  # 10 + 5 - 10.50
        ledger_rows = page.locator("#ledger tbody tr")
        assert "Invoice settled from the balance" in ledger_rows.first.inner_text()
        assert invoice.number in ledger_rows.first.inner_text()
        assert page.errors == [], page.errors
