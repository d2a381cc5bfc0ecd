"""The lease page's elastic part (marketplace/views_scaling.py): the rule in words, its status and message, the
current target, the chart's source, and the form that sets, changes and removes the rule, in English and Chinese."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Role
from scheduler import elastic
from scheduler.models import ScalingRule
from scheduler.services import lease_create
from tests.factories import GpuModelFactory, MembershipFactory, online_server

pytestmark = pytest.mark.django_db

RULE = {
    "min_gpus": "1",
    "max_gpus": "6",
    "target": "utilization",
    "target_utilization_pct": "70",
    "queue_depth_per_gpu": "",
    "step_up": "2",
    "step_down": "1",
    "cooldown_seconds": "120",
    "schedule": "* 0-8,18-23 * * * = 1\n0 12 * * 1-5 = 4",
    "max_price_per_hour": "12.50",
}


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="scale-h100", name="Scale H100")
    return online_server(organization=bob.org, gpu_model=model, name="bob-scale-box").offers.get()


@pytest.fixture
def lease(alice, offer):
    return lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer)


def _errors(body: str, field: str) -> str:
    match = re.search(rf'id="id_{field}_errors" class="field-error">([^<]*)<', body)
    return match.group(1) if match else ""


def test_a_lease_without_a_rule_offers_the_form_and_the_chart(client, alice, lease):
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    section = body[body.index('id="lease-scaling"') :]
    assert 'id="scaling-none"' in section and 'id="scaling-form"' in section and 'id="scaling-remove"' not in section
    assert f'data-scaling-url="/api/v1/leases/{lease.pk}/scaling/history/"' in section
    assert 'src="/static/js/scaling_chart.js"' in body
    assert 'id="scaling-chart-text"' in section


def test_setting_a_rule_saves_it_and_the_page_shows_it_in_words(client, alice, lease):
    client.force_login(alice.user)
    response = client.post(f"/leases/{lease.pk}/scaling/", {**RULE, "idempotency_key": "set-1"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == f"/leases/{lease.pk}/#lease-scaling"
    rule = ScalingRule.objects.get(lease=lease)
    assert (rule.min_gpus, rule.max_gpus, rule.target_utilization_pct, rule.queue_depth_per_gpu) == (1, 6, 70, None)
    assert (rule.step_up, rule.step_down, rule.cooldown_seconds) == (2, 1, 120)
    assert rule.schedule == [{"cron": "* 0-8,18-23 * * *", "max_gpus": 1}, {"cron": "0 12 * * 1-5", "max_gpus": 4}]
    assert rule.max_price_per_hour == Decimal("12.5")
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "The scaling rule is saved: 1 to 6 cards." in body
    section = body[body.index('id="lease-scaling"') :]
    assert "1 to 6" in section and "near 70 %" in section and "+2 / −1 cards" in section and "120 s" in section
    assert "USD 12.50 an hour" in section
    schedule = section[section.index('id="scaling-schedule"') :]
    assert "<code>* 0-8,18-23 * * *</code>" in schedule and "4 cards" in schedule
    assert "Not checked yet" in section and 'id="scaling-remove"' in section
    # The form shows the rule's settings to change them.
    assert 'name="max_gpus" value="6"' in section and "0 12 * * 1-5 = 4" in section
    # A second submission of the same form changes nothing more.
    again = client.post(f"/leases/{lease.pk}/scaling/", {**RULE, "max_gpus": "7", "idempotency_key": "set-1"})
    assert again.status_code == 400 or ScalingRule.objects.get(lease=lease).max_gpus == 6


def test_the_status_message_and_target_are_shown_in_english_and_chinese(client, alice, lease):
    elastic.scaling_set(lease, {"min_gpus": 2, "max_gpus": 8, "target_utilization_pct": 70})
    ScalingRule.objects.filter(lease=lease).update(
        status=ScalingRule.Status.WAITING_CAPACITY,
        desired_gpus=4,
        evaluated_at=timezone.now(),
        status_notes=[
            elastic.note("utilization_above", u=95, t=70),
            elastic.note("waiting_capacity", n=2),
        ],
    )
    client.force_login(alice.user)
    english = client.get(f"/leases/{lease.pk}/").content.decode()
    status = english[english.index('id="scaling-status"') :]
    assert 'data-status="waiting_capacity"' in english and "Waiting for capacity" in status
    assert "It wants 4 cards and holds 2: waiting for free cards" in status
    assert "Utilisation 95% is above the target 70%. Waiting for 2 more free cards." in english
    assert "mean utilisation of those cards (%)" in english and "%%" not in english
    assert re.search(r'id="scaling-desired">4 cards<', english)
    chinese = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    section = chinese[chinese.index('id="lease-scaling"') :]
    for words in ("弹性伸缩", "等待可用容量", "利用率 95% 高于目标 70%。", "还在等待 2 张空闲卡。", "保存规则"):
        assert words in section, words
    assert "Waiting for" not in section
    assert "这些卡的平均利用率（%）" in section and "%%" not in section


def test_bad_settings_are_shown_beside_their_fields_and_nothing_is_saved(client, alice, lease):
    client.force_login(alice.user)
    url = f"/leases/{lease.pk}/scaling/"
    response = client.post(url, {**RULE, "min_gpus": "5", "max_gpus": "3", "idempotency_key": "a"})
    assert response.status_code == 400
    assert "cannot be more than the most" in _errors(response.content.decode(), "min_gpus")
    response = client.post(url, {**RULE, "schedule": "every night = 0", "idempotency_key": "b"})
    assert response.status_code == 400 and "is not a cron expression" in _errors(response.content.decode(), "schedule")
    for n, odd in enumerate(["-1 * * * *", "1,,2 * * * *", "*/* * * * *", "٣ * * * *", "*/0 * * * *"]):
        response = client.post(url, {**RULE, "schedule": f"{odd} = 1", "idempotency_key": f"odd-{n}"})
        assert response.status_code == 400 and "is not a cron expression" in _errors(
            response.content.decode(), "schedule"
        ), odd
    response = client.post(url, {**RULE, "schedule": "* * * * * = 9", "idempotency_key": "c"})
    assert response.status_code == 400 and "between the fewest (1) and the most (6)" in _errors(
        response.content.decode(), "schedule"
    )
    response = client.post(url, {**RULE, "target": "queue", "idempotency_key": "d"})
    assert response.status_code == 400 and "queued jobs" in _errors(response.content.decode(), "queue_depth_per_gpu")
    response = client.post(url, {**RULE, "max_price_per_hour": "0", "idempotency_key": "e"})
    assert response.status_code == 400 and _errors(response.content.decode(), "max_price_per_hour")
    chinese = client.post(
        url, {**RULE, "min_gpus": "5", "max_gpus": "3", "idempotency_key": "f"}, HTTP_ACCEPT_LANGUAGE="zh-hans"
    )
    assert chinese.status_code == 400 and "最少卡数不能多于最多卡数" in _errors(chinese.content.decode(), "min_gpus")
    assert not ScalingRule.objects.filter(lease=lease).exists()


def test_a_queue_rule_can_be_set_changed_and_removed(client, alice, lease):
    client.force_login(alice.user)
    queue = {**RULE, "target": "queue", "queue_depth_per_gpu": "10", "target_utilization_pct": "", "schedule": ""}
    assert client.post(f"/leases/{lease.pk}/scaling/", {**queue, "idempotency_key": "q"}).status_code == 302
    rule = ScalingRule.objects.get(lease=lease)
    assert rule.queue_depth_per_gpu == 10 and rule.target_utilization_pct is None and rule.schedule == []
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "10 queued jobs per card" in body and "none reported yet" in body
    response = client.post(f"/leases/{lease.pk}/scaling/remove/", {"idempotency_key": "r"})
    assert response.status_code == 302
    assert not ScalingRule.objects.filter(lease=lease).exists()
    lease.refresh_from_db()
    assert lease.gpu_count == 2, "removing the rule keeps the cards"
    assert "The scaling rule is removed" in client.get(f"/leases/{lease.pk}/").content.decode()


def test_other_tenants_and_readers_cannot_change_the_rule(client, alice, charlie, lease):
    client.force_login(charlie.user)
    assert client.post(f"/leases/{lease.pk}/scaling/", {**RULE, "idempotency_key": "x"}).status_code == 404
    assert client.post(f"/leases/{lease.pk}/scaling/remove/", {"idempotency_key": "y"}).status_code == 404
    viewer = MembershipFactory(organization=alice.org, role=Role.BILLING)
    client.force_login(viewer.user)
    elastic.scaling_set(lease, {"max_gpus": 4, "target_utilization_pct": 60})
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="scaling-rule"' in body and 'id="scaling-form"' not in body and 'id="scaling-remove"' not in body
    assert client.post(f"/leases/{lease.pk}/scaling/", {**RULE, "idempotency_key": "z"}).status_code == 403
    assert ScalingRule.objects.get(lease=lease).max_gpus == 4


def test_other_plans_offer_no_scaling(client, alice, offer):
    month = lease_create(
        org=alice.org, plan="server_month", servers=1, offer=offer, end_at=timezone.now() + timedelta(days=30)
    )
    client.force_login(alice.user)
    assert 'id="lease-scaling"' not in client.get(f"/leases/{month.pk}/").content.decode()


def test_an_ended_lease_offers_no_form_and_a_late_post_says_why(client, alice, offer):
    from scheduler.services import lease_end

    client.force_login(alice.user)
    ended = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer)
    lease_end(lease=ended)
    assert 'id="lease-scaling"' not in client.get(f"/leases/{ended.pk}/").content.decode()
    response = client.post(f"/leases/{ended.pk}/scaling/", {**RULE, "idempotency_key": "late"})
    assert response.status_code == 302
    assert "can no longer have a scaling rule" in client.get(response["Location"]).content.decode()
    assert not ScalingRule.objects.filter(lease=ended).exists()


def test_the_status_sentence_counts_one_card_and_several():
    from marketplace.views_scaling import status_sentence
    from scheduler.models import Lease

    now = timezone.now()
    one, three = Lease(gpu_count=1), Lease(gpu_count=3)
    bound = ScalingRule(status=ScalingRule.Status.AT_BOUND, evaluated_at=now, desired_gpus=1)
    assert status_sentence(bound, one) == "It is at a bound of the rule, with 1 card."
    assert status_sentence(bound, three) == "It is at a bound of the rule, with 3 cards."
    waiting = ScalingRule(status=ScalingRule.Status.WAITING_CAPACITY, evaluated_at=now, desired_gpus=1)
    assert status_sentence(waiting, Lease(gpu_count=0)).startswith("It wants 1 card and holds 0:")
    assert status_sentence(ScalingRule(evaluated_at=None), one).startswith("Not checked yet")
