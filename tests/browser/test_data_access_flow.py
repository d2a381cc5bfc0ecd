"""Data access without cards in a real browser (issue 16): a customer whose volume is kept for a grace period (its
money ran out) opens a data-access session from /volumes/, sees it waiting for the server, then its SSH command
once the server's agent runs it, and ends it; the same in Chinese.

The agent's reports (the volume made, the session's container running) go through the services that apply agent
reports, as the workloads tests do; the pages do everything else."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from inventory.models import Server
from tests.browser.conftest import screenshot
from tests.factories import GpuModelFactory, online_server
from workloads import agent_channel, services, volumes
from workloads.models import DataAccess, Volume, Workload

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn9pbmcMHbb0lKb1r7TQ2PoZSjJ5oV0uMiCeu/jGO0L alice@laptop"


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text().replace("\u00a0", " ").strip()


@pytest.mark.parametrize(
    ("locale", "words"),
    [
        (
            "en-US",
            {
                "title": "Data access without cards",
                "open": "Open data access",
                "waiting": "Waiting for the server",
                "running": "Running",
                "end": "End",
                "ended": "Ended",
            },
        ),
        (
            "zh-CN",
            {
                "title": "无卡数据访问",
                "open": "开启数据访问",
                "waiting": "等待服务器",
                "running": "运行中",
                "end": "结束",
                "ended": "已结束",
            },
        ),
    ],
)
def test_a_customer_in_grace_opens_data_access_sees_its_ssh_command_and_ends_it(open_as, alice, bob, locale, words):
    model = GpuModelFactory(slug=f"access-flow-{locale.lower()}", name="Access Flow H100")
    server = online_server(
        organization=bob.org, gpus=2, gpu_model=model, name="bob-access-flow", public_host="gpu.example.com"
    )
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=100)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.1000")
    offer.save(update_fields=["storage_gb_month_price"])
    volume = volumes.volume_create(org=alice.org, server=server, name="datasets", size_gb=10)
    volumes.volume_reports_apply(
        server=server, entries=[{"id": volume.pk, "state": "ready", "used_gb": 0, "message": ""}], at=timezone.now()
    )
    volumes.volumes_hold(org=alice.org, wipe_at=timezone.now() + timedelta(days=15))
    services.ssh_key_add(user=alice.user, name="laptop", public_key=KEY)
    page = open_as(alice.user, locale=locale)

    page.goto("/volumes/")
    section = page.locator("#data-access")
    assert _text(page, "#data-access-title") == words["title"]
    form = section.locator(f'form[data-server="{server.pk}"]')
    assert form.locator(f'input[name="volumes"][value="{volume.pk}"]').is_checked()
    assert form.locator('input[name="ssh_keys"]').first.is_checked()
    form.get_by_role("button", name=words["open"]).click()
    page.wait_for_url(re.compile(r"/volumes/#data-access$"))
    session = DataAccess.objects.get(organization=alice.org)
    row = f'tr[data-session="{session.pk}"]'
    assert _text(page, f"{row} .data-access-state") == words["waiting"]
    assert "/data/datasets" in _text(page, row)
    assert page.locator(f'form[data-server="{server.pk}"]').count() == 0  # its one volume is open already

    # The server's agent runs the session's container and reports its SSH port.
    workload = Workload.objects.get(data_access=session)
    agent_channel.reported_states_apply(
        server=server, report={"workloads": [{"id": workload.pk, "state": "running", "ports": {"22": 40222}}]}
    )
    page.reload()
    assert _text(page, f"{row} .data-access-state") == words["running"]
    assert _text(page, f"{row} .ssh-command") == "ssh -p 40222 root@gpu.example.com"
    screenshot(page, f"data-access-{locale}")

    page.locator(row).get_by_role("button", name=words["end"]).click()
    page.wait_for_url(re.compile(r"/volumes/#data-access$"))
    assert _text(page, f"{row} .data-access-state") == words["ended"]
    assert page.locator(f"{row} .ssh-command").count() == 0
    session.refresh_from_db()
    assert session.state == "ended" and Volume.objects.get(pk=volume.pk).state == "grace"
