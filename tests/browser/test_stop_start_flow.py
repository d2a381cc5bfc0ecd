"""Stopping and starting a card-hour lease in a real browser (issue 16): the customer stops its running lease from
the lease page (the page says it is stopped and its cards released, and they are), starts it again at once, before
the server has cleaned the cards (its own cards, which nobody has used since, come back), and sees it active on the
same server again; the same page in Chinese says all of it in Chinese.

The server is enrolled through the API with its agent (tests/workloads/conftest.py: an independent implementation
of the agent's signed reads and reports).
"""

from __future__ import annotations

import pytest

from inventory import telemetry
from scheduler.models import Allocation, Lease
from tests.browser.conftest import screenshot
from tests.factories import GpuModelFactory
from tests.workloads.conftest import H100, add_key, enrolled_box, rent_with_workload
from workloads.models import Template

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_telemetry_days():
    """The agent's reports store samples in daily partitions remembered per process (see tests/workloads)."""
    telemetry._known_days.clear()
    yield
    telemetry._known_days.clear()


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


def _held(lease: Lease) -> int:
    """How many cards the lease holds now (open allocation periods)."""
    return Allocation.objects.filter(lease=lease, period__upper_inf=True).count()


def test_a_customer_stops_a_running_lease_and_starts_it_again_at_once_on_its_own_cards(open_as, alice, bob):
    # The public template the workload runs (a transactional test starts without the data migration's rows).
    Template.objects.get_or_create(
        organization=None,
        slug="cuda-ssh",
        defaults={
            "name": "CUDA 12.4 base with SSH",
            "image": "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04",
            "ports": [22],
        },
    )
    model = GpuModelFactory(slug="stop-flow-h100", name="Stop Flow H100", nvml_names=[H100])
    box = enrolled_box(bob, model, name="stop-flow", prefix="5f10", gpus=2)
    created = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=2)
    lease = Lease.objects.get(pk=created["id"])
    [item] = box.agent.desired()["workloads"]
    box.agent.report([{"id": item["id"], "state": "running", "ports": {"22": 40022}}])
    assert _held(lease) == 2

    page = open_as(alice.user)
    page.goto(f"/leases/{lease.pk}/")
    assert _text(page, "#lease-state") == "Active"
    assert page.locator("#start-lease").count() == 0

    # Stop: the page says stopped and why nothing is charged; the cards are released.
    page.locator("#stop-lease").click()
    page.locator("#lease-stopped").wait_for()
    assert _text(page, "#lease-state") == "Stopped"
    assert f"Lease {lease.pk} is stopped: its cards are released and not charged, its volumes are kept." in (
        page.content()
    )
    assert _text(page, "#lease-stopped") == (
        "This lease is stopped: its cards are released and not charged, and its volumes are kept on server "
        f"{box.server_id}. Start it to take 2 cards on that server again."
    )
    assert page.locator("#stop-lease").count() == 0 and page.locator("#start-lease").is_visible()
    assert page.locator('#lease-events tr[data-kind="stopped"]').count() == 1
    lease.refresh_from_db()
    assert lease.state == "stopped" and _held(lease) == 0
    assert box.agent.desired()["workloads"] == [], "the agent is told to remove the container"
    screenshot(page, "lease-stopped")

    # Started at once, before the server has cleaned the cards: they are its own and nobody has used them since,
    # so the start takes both back on the same server (cards cleaned after another lease would be a 409 saying when
    # to retry: tests/scheduler/test_stop_start.py).
    page.locator("#start-lease").click()
    page.get_by_text(f"Lease {lease.pk} is starting again on the same server.").wait_for()
    assert _text(page, "#lease-state") == "Active"
    assert page.locator("#lease-stopped").count() == 0 and page.locator("#stop-lease").is_visible()
    assert page.locator('#lease-events tr[data-kind="restarted"]').count() == 1
    lease.refresh_from_db()
    assert lease.state == "active" and lease.server_id == box.server_id and _held(lease) == 2
    assert set(Allocation.objects.filter(lease=lease, period__upper_inf=True).values_list("server_id", flat=True)) == {
        box.server_id
    }
    assert [w["id"] for w in box.agent.desired()["workloads"]] == [item["id"]], "the workload comes back"
    assert page.errors == [], page.errors

    # The same page in Chinese: stop, start, every label in Chinese.
    zh = open_as(alice.user, locale="zh-CN")
    zh.goto(f"/leases/{lease.pk}/")
    assert zh.locator("html").get_attribute("lang") == "zh-hans"
    assert _text(zh, "#lease-state") == "进行中"
    assert _text(zh, "#stop-lease") == "停止租约"
    zh.locator("#stop-lease").click()
    zh.locator("#lease-stopped").wait_for()
    assert _text(zh, "#lease-state") == "已停止"
    zh.get_by_text(f"租约 {lease.pk} 已停止：显卡已释放，不再计费，数据卷予以保留。").wait_for()
    assert _text(zh, "#lease-stopped").startswith("此租约已停止：显卡已释放，不再计费，数据卷保留在服务器")
    assert _text(zh, "#start-lease") == "启动租约"
    zh.locator("#start-lease").click()
    zh.get_by_text(f"租约 {lease.pk} 正在原服务器上重新启动。").wait_for()
    assert _text(zh, "#lease-state") == "进行中"
    lease.refresh_from_db()
    assert lease.state == "active" and _held(lease) == 2
    screenshot(zh, "lease-restarted-zh-hans")
    assert zh.errors == [], zh.errors
