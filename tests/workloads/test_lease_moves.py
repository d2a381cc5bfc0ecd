"""A stopped lease that finds no free cards on its server (issue 16): its start's 409 no_capacity names the servers
with free cards of its model and room for its volumes; POST /api/v1/leases/{id}/move/ (consent) moves its volumes
there through the agents' transfer endpoints, it cannot start meanwhile, and when the last volume switches the lease
is on the new server and started there, its volume mounted; a lease without volumes starts there at once."""

from __future__ import annotations

import hashlib
import re

import pytest

from scheduler.models import Allocation, Lease
from tests.workloads.conftest import Box, enrolled_box
from tests.workloads.test_volume_moves import get_chunk, post, put_chunk, ready_volume
from tests.workloads.test_volumes import mount_lease
from tests.workloads.test_volumes_api import lend_storage
from workloads.models import Volume, VolumeMove


@pytest.fixture(autouse=True)
def _staging(settings, tmp_path):
    settings.SUANLI_TRANSFER_DIR = tmp_path / "transfers"
    settings.SUANLI_TRANSFER_CHUNK_BYTES = 4096


@pytest.fixture
def source(bob, box) -> Box:
    lend_storage(bob, box, disk_gb=100)
    return box


@pytest.fixture
def target(bob, h100) -> Box:
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    lend_storage(bob, other, disk_gb=30, price="0.2500")
    return other


def stopped_lease_without_cards(alice, charlie, source: Box, vid: int | None) -> int:
    """Alice's 4-card lease on `source` (mounting `vid`), stopped, and charlie holding 6 of its 8 cards."""
    mounts = [{"volume": vid, "path": "/data"}] if vid else []
    made = mount_lease(alice, mounts, gpu_count=4, offer=source.offer_id)
    assert made.status_code == 201, made.content
    lease = made.json()["id"]
    assert alice.api.post(f"/api/v1/leases/{lease}/stop/").status_code == 200
    taker = mount_lease(charlie, [], gpu_count=6, offer=source.offer_id)
    assert taker.status_code == 201, taker.content
    return lease


def test_the_start_names_where_it_could_go_and_the_move_starts_it_there(
    alice, charlie, source, target, django_capture_on_commit_callbacks
):
    vid = ready_volume(alice, source, size_gb=10)
    lease = stopped_lease_without_cards(alice, charlie, source, vid)
    refused = alice.api.post(f"/api/v1/leases/{lease}/start/")
    assert refused.status_code == 409, refused.content
    error = refused.json()["error"]
    assert error["code"] == "no_capacity" and "/move/" in error["message"]
    assert [s["server"] for s in error["servers"]] == [target.server_id]
    assert error["servers"][0]["free_gpus"] == 8 and error["servers"][0]["free_gb"] == 30

    no_consent = alice.api.post(f"/api/v1/leases/{lease}/move/", {"server": target.server_id}, format="json")
    assert no_consent.status_code == 400 and no_consent.json()["error"]["code"] == "consent_required"
    there = alice.api.post(
        f"/api/v1/leases/{lease}/move/", {"server": source.server_id, "consent": True}, format="json"
    )
    assert there.status_code == 409 and there.json()["error"]["code"] == "no_capacity"
    moved = alice.api.post(
        f"/api/v1/leases/{lease}/move/", {"server": target.server_id, "consent": True}, format="json"
    )
    assert moved.status_code == 202, moved.content
    [move] = moved.json()
    assert move["volume"] == vid and move["target_server"] == target.server_id
    assert VolumeMove.objects.get(pk=move["id"]).lease_id == lease
    # It cannot start while its volumes move.
    charlie_lease = Lease.objects.filter(organization=charlie.org).get()
    assert charlie.api.post(f"/api/v1/leases/{charlie_lease.pk}/end/").status_code == 200
    waiting = alice.api.post(f"/api/v1/leases/{lease}/start/")
    assert waiting.status_code == 409 and waiting.json()["error"]["code"] == "volume_moving"

    data = b"the volume's tar"
    assert put_chunk(source.agent, move["id"], 0, data).status_code == 200
    digest = hashlib.sha256(data).hexdigest()
    assert (
        post(source.agent, move["id"], "sent", {"chunks": 1, "bytes": len(data), "sha256": digest}).status_code == 200
    )
    assert get_chunk(target.agent, move["id"], 0).content == data
    with django_capture_on_commit_callbacks(execute=True):
        done = post(target.agent, move["id"], "received", {"bytes": len(data), "sha256": digest})
    assert done.status_code == 200, done.content
    row = Lease.objects.get(pk=lease)
    assert row.server_id == target.server_id and row.state == "active"
    held = Allocation.objects.filter(lease_id=lease, period__upper_inf=True)
    assert held.count() == 4 and {a.server_id for a in held} == {target.server_id}
    assert Volume.objects.get(pk=vid).server_id == target.server_id
    item = next(w for w in target.agent.desired()["workloads"] if w["lease"] == lease)
    assert item["volumes"] == [{"id": vid, "path": "/data", "size_gb": 10}]


def test_a_lease_without_volumes_starts_there_at_once(alice, charlie, source, target):
    lease = stopped_lease_without_cards(alice, charlie, source, None)
    assert [s["server"] for s in alice.api.post(f"/api/v1/leases/{lease}/start/").json()["error"]["servers"]] == [
        target.server_id
    ]
    moved = alice.api.post(
        f"/api/v1/leases/{lease}/move/", {"server": target.server_id, "consent": True}, format="json"
    )
    assert moved.status_code == 202 and moved.json() == []
    row = Lease.objects.get(pk=lease)
    assert row.server_id == target.server_id and row.state == "active"


def test_a_cancelled_volume_of_a_lease_move_leaves_the_lease_where_it_was(alice, charlie, source, target):
    vid = ready_volume(alice, source, size_gb=10)
    lease = stopped_lease_without_cards(alice, charlie, source, vid)
    moved = alice.api.post(
        f"/api/v1/leases/{lease}/move/", {"server": target.server_id, "consent": True}, format="json"
    )
    assert moved.status_code == 202
    assert alice.api.delete(f"/api/v1/volumes/{vid}/move/").status_code == 200
    row = Lease.objects.get(pk=lease)
    assert row.server_id == source.server_id and row.state == "stopped"
    assert Volume.objects.get(pk=vid).server_id == source.server_id


def test_another_tenants_lease_is_404(alice, charlie, source, target):
    lease = stopped_lease_without_cards(alice, charlie, source, None)
    assert (
        charlie.api.post(
            f"/api/v1/leases/{lease}/move/", {"server": target.server_id, "consent": True}, format="json"
        ).status_code
        == 404
    )


def _page(persona, lease: int, language: str = "") -> str:
    from django.test import Client

    client = Client()
    client.force_login(persona.user)
    if language:
        client.cookies["django_language"] = language
    response = client.get(f"/leases/{lease}/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_lease_page_offers_to_move_and_start_there_with_consent_and_shows_the_copy(alice, charlie, source, target):
    from django.test import Client

    vid = ready_volume(alice, source, size_gb=10)
    lease = stopped_lease_without_cards(alice, charlie, source, vid)
    body = _page(alice, lease)
    form = re.search(r'<form[^>]*id="lease-move-form".*?</form>', body, re.S).group(0)
    assert f'name="server" value="{target.server_id}"' in form and "8 free cards" in form
    assert f"then wiped on server {source.server_id}" in form and 'name="consent"' in form
    zh = _page(alice, lease, "zh-hans")
    assert "迁移我的存储卷并在那里启动" in zh and "8 张空闲卡" in zh and "Move and start there" not in zh

    client = Client()
    client.force_login(alice.user)
    refused = client.post(f"/leases/{lease}/move/", {"server": target.server_id}, follow=True).content.decode()
    assert "Tick consent" in refused and not VolumeMove.objects.exists()
    moved = client.post(f"/leases/{lease}/move/", {"server": target.server_id, "consent": "yes"}, follow=True)
    assert f"being copied to server {target.server_id}" in moved.content.decode()
    VolumeMove.objects.filter(lease_id=lease).update(state="copying", bytes_done=512, bytes_total=2048)
    body = _page(alice, lease)
    assert 'id="lease-moving"' in body and '<progress value="512" max="2048"' in body
    assert 'id="lease-move-form"' not in body
    assert "正在迁移其存储卷" in _page(alice, lease, "zh-hans")
    outsider = Client()
    outsider.force_login(charlie.user)
    assert outsider.post(f"/leases/{lease}/move/", {"server": target.server_id, "consent": "yes"}).status_code == 404
