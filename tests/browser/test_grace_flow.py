"""A prepaid customer's volume outlives its money, in a real browser (issue 16): the balance runs out, the funds
job (after its notice period) puts the volume into a grace period, and /balance/ says so and when its data is
wiped, in English and in Chinese; a bank transfer arrives, the next run of the funds job releases the volume, and
the page shows it kept again with no wipe date.

The clock is time_machine's (process-wide, so the live server's thread sees it too); the funds job runs in the
test's thread at an explicit `now`, as the beat would run it. Money comes in by bank transfer
(`billing.ledger.adjustment_record`, what staff record), as in tests/browser/test_balance_flow.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail

from billing import ledger
from billing.funds import funds_check
from tests.browser.conftest import screenshot
from tests.factories import online_server
from workloads.models import Volume

pytestmark = pytest.mark.django_db(transaction=True)

# 2027-05-10 08:00 in Asia/Shanghai (the platform clock); May has 744 hours, so 744 GB at 1.00 a GB-month burns
# 1.00 an hour.
START = datetime(2027, 5, 10, 0, 0, tzinfo=UTC)
GRACE_DAYS = 15


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


def test_a_prepaid_customers_volume_is_kept_for_a_grace_period_when_money_runs_out_and_released_by_a_transfer(
    open_as, alice, bob, settings
):
    settings.SUANLI_FUNDS_NOTICE_SECONDS = 3600
    settings.SUANLI_VOLUME_GRACE_DAYS = GRACE_DAYS
    settings.STRIPE_PUBLISHABLE_KEY = ""
    with time_machine.travel(START, tick=False) as clock:
        ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency="USD")
        ledger.adjustment_record(org=alice.org, amount="2.00", currency="USD", reference="BANK-MAY-1")
        server = online_server(
            organization=bob.org, gpus=1, offer={"storage_gb_month_price": Decimal("1.0000")}, name="bob-disk"
        )
        volume = Volume.objects.create(
            organization=alice.org,
            server=server,
            name="datasets",
            size_gb=744,
            state="ready",
            price_per_gb_month=Decimal("1.0000"),
            currency="USD",
            created_at=START,
            ready_at=START,
        )
        page = open_as(alice.user)
        row = f"#balance-volume-{volume.pk}"

        page.goto("/balance/")
        assert _text(page, "#figure-balance strong") == "USD 2.00"
        assert _text(page, "#figure-burn strong") == "USD 1.00 an hour"
        assert _text(page, f"{row} th") == "datasets (744 GB)"
        assert _text(page, f"{row} td:nth-of-type(1)") == "Ready"
        assert _text(page, f"{row} td:nth-of-type(2)") == "—"
        assert page.locator("#volumes-grace").count() == 0

        # An hour in, less than an hour is left: warned. Two hours in, it is out, and the notice is an hour old:
        # the volume is kept for the grace period, to be wiped 15 days from now.
        warned = START + timedelta(hours=1, minutes=1)
        clock.move_to(warned)
        assert funds_check(now=warned)["notified"] == 1
        volume.refresh_from_db()
        assert volume.state == "ready"
        out = START + timedelta(hours=2, minutes=2)
        clock.move_to(out)
        funds_check(now=out)
        volume.refresh_from_db()
        wipe_at = out + timedelta(days=GRACE_DAYS)
        assert (volume.state, volume.wipe_at) == ("grace", wipe_at)
        told = [m for m in mail.outbox if m.subject == "[Suanli] Your Suanli volumes will be wiped unless you top up"]
        assert len(told) == 1 and "datasets" in told[0].body

        page.goto("/balance/")
        assert _text(page, "#volumes-grace") == (
            "A volume is kept for a grace period because your balance ran out: its data is wiped at the date below "
            "unless you top up first. Meanwhile you can reach their data over SSH without renting a card: open data "
            "access (charged per hour)."
        )
        assert page.locator("#volumes-grace a").get_attribute("href") == "/volumes/#data-access"
        assert _text(page, f"{row} td:nth-of-type(1)") == "Kept for a grace period"
        wipe = page.locator(f"{row} td:nth-of-type(2) time")
        assert wipe.get_attribute("datetime") == wipe_at.isoformat() == "2027-05-25T02:02:00+00:00"
        assert "25" in wipe.inner_text() and "2027" in wipe.inner_text() and wipe.inner_text().endswith("UTC")
        assert _text(page, "#figure-balance strong") == "USD 2.00"
        screenshot(page, "balance-volume-grace")

        zh = open_as(alice.user, locale="zh-CN")
        zh.goto("/balance/")
        assert zh.locator("html").get_attribute("lang") == "zh-hans"
        assert _text(zh, "#volumes-title") == "存储卷"
        assert _text(zh, "#volumes-grace") == (
            "由于余额已用完，1 个存储卷在宽限期内保留：除非您先充值，其数据将在下列时间被清除。"
            " 在此期间，您无需租卡即可通过 SSH 访问其数据：开启数据访问（按小时计费）。"
        )
        assert _text(zh, f"{row} td:nth-of-type(1)") == "宽限期内保留"
        assert "清除时间" in _text(zh, "#balance-volumes thead")
        zh_wipe = zh.locator(f"{row} td:nth-of-type(2) time")
        assert zh_wipe.get_attribute("datetime") == wipe_at.isoformat() and "2027" in zh_wipe.inner_text()
        screenshot(zh, "balance-volume-grace-zh-hans")

        # A bank transfer arrives: the money is in, but the volume is released by the funds job's next run.
        ledger.adjustment_record(org=alice.org, amount="50.00", currency="USD", reference="BANK-MAY-2")
        paid = START + timedelta(hours=3)
        clock.move_to(paid)
        page.goto("/balance/")
        assert _text(page, "#figure-balance strong") == "USD 52.00"
        assert _text(page, f"{row} td:nth-of-type(1)") == "Kept for a grace period"
        assert funds_check(now=paid)["recovered"] == 1
        volume.refresh_from_db()
        assert (volume.state, volume.wipe_at) == ("ready", None)

        page.reload()
        assert page.locator("#volumes-grace").count() == 0
        assert _text(page, f"{row} td:nth-of-type(1)") == "Ready"
        assert _text(page, f"{row} td:nth-of-type(2)") == "—"
        assert page.locator(f"{row} time").count() == 0
        assert _text(page, f"{row} td:nth-of-type(3)") == "USD 3.00"  # three hours of 1.00, billed all along
        zh.reload()
        assert zh.locator("#volumes-grace").count() == 0
        assert _text(zh, f"{row} td:nth-of-type(1)") == "就绪"
        screenshot(page, "balance-volume-released")
        assert page.errors == [], page.errors
        assert zh.errors == [], zh.errors
