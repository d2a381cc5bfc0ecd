"""An elastic lease in a real browser (issue 20): the customer sets a scaling rule on the lease page (a bad one is
refused beside its field), sees it in words and "not checked yet"; the beat job's function scales the lease on the
utilisation its cards reported, and the page then says so, with the cards it wants now, and draws the chart of the
cards held beside their mean utilisation. The same in Chinese, changing the rule."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from inventory import telemetry
from inventory.models import Gpu
from scheduler.elastic import scale_leases
from scheduler.models import Lease, ScalingRule
from scheduler.selectors import held_allocations
from scheduler.services import lease_create
from tests.browser.conftest import screenshot
from tests.factories import GpuModelFactory, online_server

pytestmark = pytest.mark.django_db(transaction=True)


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


def _busy(lease: Lease, util: float) -> None:
    """The lease's cards reported `util` % every 5 s over the last minute."""
    now = timezone.now()
    gpus = list(Gpu.objects.filter(pk__in=held_allocations(lease=lease, at=now).values("gpu_id")))
    rows = [
        (now - timedelta(seconds=s), g.pk, g.server_id, util, 60000, 70.0, 600.0, 1900, 0, 0, json.dumps({}))
        for g in gpus
        for s in range(2, 60, 5)
    ]
    telemetry.copy_samples(rows)


@pytest.fixture
def lease(alice, bob) -> Lease:
    model = GpuModelFactory(slug="elastic-flow-h100", name="Elastic Flow H100")
    offer = online_server(organization=bob.org, gpu_model=model, name="elastic-flow").offers.get()
    started = timezone.now() - timedelta(minutes=2)
    return lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=started)


def _fill_rule(page, *, low: str, high: str, target: str, cooldown: str, schedule: str = "", price: str = "") -> None:
    page.fill("#id_min_gpus", low)
    page.fill("#id_max_gpus", high)
    page.check("#id_target_0")
    page.fill("#id_target_utilization_pct", target)
    page.fill("#id_step_up", "2")
    page.fill("#id_step_down", "1")
    page.fill("#id_cooldown_seconds", cooldown)
    page.fill("#id_schedule", schedule)
    page.fill("#id_max_price_per_hour", price)


def test_a_customer_sets_a_rule_sees_it_scale_and_the_chart_drawn(open_as, alice, lease):
    page = open_as(alice.user)
    page.goto(f"/leases/{lease.pk}/")
    assert page.locator("#scaling-none").is_visible()
    page.locator("#scaling-chart-section[data-drawn]").wait_for(state="attached")

    # A rule whose fewest cards exceed its most is refused beside the field, and nothing is saved.
    _fill_rule(page, low="6", high="4", target="70", cooldown="60")
    page.locator("#scaling-save").click()
    page.locator("#id_min_gpus_errors").wait_for()
    assert "cannot be more than the most" in _text(page, "#id_min_gpus_errors")
    assert not ScalingRule.objects.filter(lease=lease).exists()

    _fill_rule(page, low="2", high="6", target="70", cooldown="60", schedule="* 0-8 * * 6 = 2", price="20")
    page.locator("#scaling-save").click()
    page.get_by_text("The scaling rule is saved: 2 to 6 cards.").wait_for()
    assert _text(page, "#scaling-status").startswith("At its target")
    assert "Not checked yet" in _text(page, "#scaling-status")
    assert "near 70 %" in _text(page, "#scaling-rule") and "USD 20.00 an hour" in _text(page, "#scaling-price")
    assert "* 0-8 * * 6" in _text(page, "#scaling-schedule")

    # Its cards were busy: the beat job's function grows it by 2, and the page says so and draws the steps.
    _busy(lease, 95.0)
    assert scale_leases()["scaled"] == 1
    lease.refresh_from_db()
    assert lease.gpu_count == 4
    page.goto(f"/leases/{lease.pk}/")
    assert page.locator("#scaling-status").get_attribute("data-status") == "scaling"
    assert _text(page, "#scaling-desired") == "4 cards" and _text(page, "#scaling-held") == "4"
    assert "Utilisation 95% is above the target 70%." in _text(page, "#scaling-message")
    assert page.locator('#lease-events tr[data-kind="scaled"]').count() == 1
    page.locator("#scaling-chart-section[data-drawn]").wait_for(state="attached")
    assert page.locator("#chart-scaling canvas").count() >= 1
    status = _text(page, "#scaling-chart-section .chart-status")
    assert status.startswith("Showing 1 h"), status
    screenshot(page, "lease-elastic")
    assert page.errors == [], page.errors


def test_the_elastic_part_in_chinese(open_as, alice, lease):
    page = open_as(alice.user, locale="zh-CN")
    page.goto(f"/leases/{lease.pk}/")
    assert _text(page, "#scaling-title") == "弹性伸缩"
    assert _text(page, "#scaling-save") == "保存规则"
    _fill_rule(page, low="2", high="8", target="60", cooldown="30")
    page.locator("#scaling-save").click()
    page.get_by_text("伸缩规则已保存：2 至 8 张卡。").wait_for()
    assert "尚未检查" in _text(page, "#scaling-status")
    assert ScalingRule.objects.get(lease=lease).target_utilization_pct == 60

    # Quiet cards at its minimum: the rule holds, and the page says why in Chinese.
    _busy(lease, 5.0)
    assert scale_leases()["held"] == 1
    page.goto(f"/leases/{lease.pk}/")
    assert page.locator("#scaling-status").get_attribute("data-status") == "at_bound"
    assert "已达卡数上下限，持有 2 张卡。" in _text(page, "#scaling-status")
    assert "利用率 5% 低于目标 60%。" in _text(page, "#scaling-message")
    page.locator("#scaling-chart-section[data-drawn]").wait_for(state="attached")
    assert page.locator("#chart-scaling canvas").count() >= 1
    assert _text(page, "#scaling-chart-section .chart-status").startswith("显示")

    # The rule removed: the lease keeps its cards.
    page.locator("#scaling-remove").click()
    page.get_by_text("伸缩规则已删除；租约保留其当前持有的卡。").wait_for()
    assert page.locator("#scaling-none").is_visible()
    assert not ScalingRule.objects.filter(lease=lease).exists()
    screenshot(page, "lease-elastic-zh-hans")
    assert page.errors == [], page.errors
