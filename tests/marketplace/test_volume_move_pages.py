"""The volumes page's moves (issue 16): Move opens a form with the servers the volume may go to and a consent box;
without consent nothing moves; with it the move starts, its row shows the progress bar (bytes the target copied)
and Cancel; another tenant's volume is 404 and a role that may not operate gets 403; in English and 简体中文."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from accounts.models import Role
from inventory.models import Server
from tests.conftest import make_persona
from tests.factories import GpuModelFactory, online_server
from tests.marketplace.test_volume_pages import _ready, _row, _signed_in
from tests.support.pages import assert_page_keeps_to_the_policy
from workloads.models import VolumeMove


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="move-h100", name="Move H100")
    server = online_server(organization=bob.org, gpu_model=model, name="bob-vol-a")
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=100)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.1000")
    offer.save(update_fields=["storage_gb_month_price"])
    return offer


@pytest.fixture
def target(bob):
    server = online_server(organization=bob.org, gpu_model=GpuModelFactory(), name="bob-vol-b")
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=50)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.2500")
    offer.save(update_fields=["storage_gb_month_price"])
    return server


def test_move_asks_for_a_server_and_consent_then_shows_progress_and_cancel(alice, offer, target):
    volume = _ready(alice, offer)
    client = _signed_in(alice)
    listed = client.get("/volumes/").content.decode()
    assert f'href="/volumes/?move={volume.pk}#volume-move"' in _row(listed, volume)
    form = client.get(f"/volumes/?move={volume.pk}")
    assert_page_keeps_to_the_policy(form)
    body = form.content.decode()
    assert 'id="volume-move-form"' in body and f'name="server" value="{target.pk}"' in body
    assert f'value="{offer.server_id}"' not in re.search(r'id="volume-move-form".*?</form>', body, re.S).group(0)
    assert "is wiped" in body and 'name="consent"' in body and "30 GB free" not in body and "50 GB free" in body

    refused = client.post(f"/volumes/{volume.pk}/move/", {"server": target.pk}, follow=True)
    assert "Tick consent" in refused.content.decode() and not VolumeMove.objects.exists()

    moved = client.post(f"/volumes/{volume.pk}/move/", {"server": target.pk, "consent": "yes"}, follow=True)
    assert moved.status_code == 200 and "is being copied to server" in moved.content.decode()
    move = VolumeMove.objects.get(volume=volume)
    assert move.target_id == target.pk and move.requested_by == alice.user
    VolumeMove.objects.filter(pk=move.pk).update(
        state="copying", bytes_sent=3 * 2**20, bytes_done=2**20, bytes_total=4 * 2**20
    )
    row = _row(client.get("/volumes/").content.decode(), volume)
    assert f'<progress value="{2**20}" max="{4 * 2**20}"' in row and "1.0\xa0MB of 4.0\xa0MB copied" in row
    assert f"Moving to server {target.pk}" in row and "Cancel the move" in row and "?move=" not in row

    cancelled = client.post(f"/volumes/{volume.pk}/move/cancel/", follow=True)
    assert "is cancelled" in cancelled.content.decode()
    assert VolumeMove.objects.get(pk=move.pk).state == "cancelled"


def test_the_chinese_move_form_and_progress(alice, offer, target):
    volume = _ready(alice, offer)
    client = _signed_in(alice, "zh-hans")
    body = client.get(f"/volumes/?move={volume.pk}").content.decode()
    assert "把存储卷 datasets 迁移到另一台服务器" in body and "我同意" in body and "剩余 50 GB" in body
    assert "I agree" not in body and "Move it" not in body
    refused = client.post(f"/volumes/{volume.pk}/move/", {"server": target.pk}, follow=True).content.decode()
    assert "请勾选同意" in refused and "Tick consent" not in refused
    client.post(f"/volumes/{volume.pk}/move/", {"server": target.pk, "consent": "yes"})
    again = client.post(f"/volumes/{volume.pk}/move/", {"server": target.pk, "consent": "yes"}, follow=True)
    assert "此存储卷已在迁移中。" in again.content.decode()
    row = _row(client.get("/volumes/").content.decode(), volume)
    assert f"正在迁移到服务器 {target.pk}" in row and "取消迁移" in row and "已复制" in row


def test_another_tenants_volume_is_404_and_a_role_that_may_not_operate_403(alice, charlie, offer, target):
    volume = _ready(alice, offer)
    outsider = _signed_in(charlie)
    assert outsider.post(f"/volumes/{volume.pk}/move/", {"server": target.pk, "consent": "yes"}).status_code == 404
    assert outsider.post(f"/volumes/{volume.pk}/move/cancel/").status_code == 404
    assert 'id="volume-move-form"' not in outsider.get(f"/volumes/?move={volume.pk}").content.decode()
    billing = make_persona(alice.org, role=Role.BILLING, email="billing@alice.example.com")
    reader = _signed_in(billing)
    assert reader.post(f"/volumes/{volume.pk}/move/", {"server": target.pk, "consent": "yes"}).status_code == 403
    assert 'id="volume-move-form"' not in reader.get(f"/volumes/?move={volume.pk}").content.decode()
    assert not VolumeMove.objects.exists()
