"""A volume's consented move to another server (issue 16), through the API and the agents' signed transfer
endpoints, with the platform's real staging directory: consent and every refusal, the target's disk reserved from
the request, chunks in order, retried and checked, the switch when the target has the whole stream, the old copy
wiped and its disk freed, cancel, failure, a restarted copy, and tenancy (another organisation's volume and another
server's transfer are 404)."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

import pytest

from accounts import org_log
from accounts.models import OrgEvent
from inventory.models import Server
from tests.workloads.conftest import Box, enrolled_box
from tests.workloads.test_volumes import made, mount_lease, reported
from tests.workloads.test_volumes_api import lend_storage
from workloads import volume_moves, volumes
from workloads.models import Volume, VolumeMove


@pytest.fixture(autouse=True)
def _staging(settings, tmp_path):
    settings.SUANLI_TRANSFER_DIR = tmp_path / "transfers"
    settings.SUANLI_TRANSFER_CHUNK_BYTES = 4096


@pytest.fixture
def source(bob, box) -> Box:
    lend_storage(bob, box, disk_gb=100, price="0.1000")
    return box


@pytest.fixture
def target(bob, h100) -> Box:
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    lend_storage(bob, other, disk_gb=30, price="0.2500")
    return other


def ready_volume(persona, box: Box, size_gb: int = 10, name: str = "data") -> int:
    vid = made(persona, box.server_id, name, size_gb)
    reported(box.agent, [{"id": vid, "state": "ready", "used_gb": 0.002}])
    return vid


def ask(persona, vid: int, server: int, consent=True):
    return persona.api.post(f"/api/v1/volumes/{vid}/move/", {"server": server, "consent": consent}, format="json")


def put_chunk(agent, move: int, n: int, data: bytes, sha: str | None = None):
    return agent.client.put(
        f"/api/v1/agent/volume-transfers/{move}/chunks/{n}/",
        data=data,
        content_type="application/octet-stream",
        HTTP_X_CHUNK_SHA256=sha or hashlib.sha256(data).hexdigest(),
        **agent._signed(data),
    )


def get_chunk(agent, move: int, n: int):
    return agent.client.get(f"/api/v1/agent/volume-transfers/{move}/chunks/{n}/", **agent._signed(b""))


def post(agent, move: int, what: str, body: dict):
    raw = json.dumps(body).encode()
    return agent.client.post(
        f"/api/v1/agent/volume-transfers/{move}/{what}/",
        data=raw,
        content_type="application/json",
        **agent._signed(raw),
    )


def status_of(agent, move: int):
    return agent.client.get(f"/api/v1/agent/volume-transfers/{move}/", **agent._signed(b""))


def test_consent_is_required_with_a_sentence_saying_what_happens(alice, source, target):
    vid = ready_volume(alice, source)
    for consent in (False, None, "yes"):
        refused = ask(alice, vid, target.server_id, consent=consent)
        assert refused.status_code == 400, refused.content
        error = refused.json()["error"]
        assert error["code"] == "consent_required" and "copies" in error["message"] and "wipes" in error["message"]
    assert not VolumeMove.objects.exists()


def test_refusals_not_ready_mounted_no_storage_no_room_own_server_and_foreign(
    alice, charlie, bob, source, target, h100
):
    creating = made(alice, source.server_id, "fresh")
    assert ask(alice, creating, target.server_id).json()["error"]["code"] == "volume_not_ready"
    vid = ready_volume(alice, source)
    same = ask(alice, vid, source.server_id)
    assert same.status_code == 400 and "server" in same.json()["error"]["fields"]
    bare = enrolled_box(bob, h100, name="box-3", prefix="b0x3")  # lends no storage
    no_storage = ask(alice, vid, bare.server_id)
    assert no_storage.status_code == 400 and "server" in no_storage.json()["error"]["fields"]
    big = ready_volume(alice, source, size_gb=40, name="big")
    full = ask(alice, big, target.server_id)
    assert full.status_code == 409 and full.json()["error"]["code"] == "no_storage"
    assert full.json()["error"]["available_gb"] == 30
    lease = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert lease.status_code == 201, lease.content
    mounted = ask(alice, vid, target.server_id)
    assert mounted.status_code == 409 and mounted.json()["error"]["code"] == "volume_in_use"
    assert ask(charlie, big, target.server_id).status_code == 404
    assert charlie.api.delete(f"/api/v1/volumes/{big}/move/").status_code == 404
    assert not VolumeMove.objects.exists()


def test_a_move_reserves_the_targets_disk_and_blocks_mounts_deletes_and_a_second_move(alice, source, target):
    vid = ready_volume(alice, source, size_gb=10)
    answer = ask(alice, vid, target.server_id)
    assert answer.status_code == 202, answer.content
    move = answer.json()
    assert move["state"] == "pending" and move["target_server"] == target.server_id
    assert Decimal(move["target_price"]) == Decimal("0.25") and Decimal(move["source_price"]) == Decimal("0.1")
    shown = alice.api.get(f"/api/v1/volumes/{vid}/").json()
    assert shown["move"] == {
        "state": "pending",
        "bytes_done": 0,
        "bytes_total": int(Decimal("0.002") * 2**30),
        "target_server": target.server_id,
    }
    assert volumes.storage_taken(Server.objects.get(pk=target.server_id)) == 10
    again = ask(alice, vid, target.server_id)
    assert again.status_code == 409 and again.json()["error"]["code"] == "volume_moving"
    deleting = alice.api.delete(f"/api/v1/volumes/{vid}/")
    assert deleting.status_code == 409 and deleting.json()["error"]["code"] == "volume_moving"
    mounting = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert mounting.status_code == 409 and mounting.json()["error"]["code"] == "volume_moving"
    # Each agent is told its side.
    out = source.agent.desired()
    assert out["volume_transfers_out"] == [{"move": move["id"], "volume": vid, "chunk_bytes": 4096}]
    assert vid in [v["id"] for v in out["volumes"]]
    incoming = target.agent.desired()
    assert incoming["volume_transfers_in"][0]["move"] == move["id"]
    assert {"id": vid, "size_gb": 10, "owner": str(alice.org.pk)} in incoming["volumes"]


def test_the_whole_transfer_switches_the_volume_and_the_old_copy_is_wiped(
    alice, source, target, settings, django_capture_on_commit_callbacks
):
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    stream = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(320))  # 10240 bytes: 4096, 4096, 2048
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    # Only the source sends, only the target reads; another server's agent learns nothing.
    assert put_chunk(target.agent, move, 0, chunks[0]).status_code == 404
    assert get_chunk(source.agent, move, 0).status_code == 404
    assert put_chunk(source.agent, move, 1, chunks[1]).status_code == 409  # out of order
    bad = put_chunk(source.agent, move, 0, chunks[0], sha="0" * 64)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "checksum_mismatch"
    assert put_chunk(source.agent, move, 0, chunks[0]).json()["duplicate"] is False
    assert put_chunk(source.agent, move, 0, chunks[0]).json()["duplicate"] is True  # a retry is harmless
    assert put_chunk(source.agent, move, 0, chunks[1]).status_code == 409  # other bytes for a staged chunk
    assert get_chunk(target.agent, move, 1).json()["error"]["code"] == "chunk_not_ready"
    got = get_chunk(target.agent, move, 0)
    assert got.status_code == 200 and got.content == chunks[0]
    assert got["X-Chunk-SHA256"] == hashlib.sha256(chunks[0]).hexdigest()
    shown = alice.api.get(f"/api/v1/volumes/{vid}/").json()["move"]
    assert shown["state"] == "copying" and shown["bytes_done"] == 4096
    for n, chunk in enumerate(chunks[1:], start=1):
        assert put_chunk(source.agent, move, n, chunk).status_code == 200
    assert put_chunk(source.agent, move, 3, b"more").status_code == 409  # the short chunk ended the stream
    digest = hashlib.sha256(stream).hexdigest()
    early = post(target.agent, move, "received", {"bytes": len(stream), "sha256": digest})
    assert early.status_code == 409 and early.json()["error"]["code"] == "transfer_incomplete"
    sent = post(source.agent, move, "sent", {"chunks": 3, "bytes": len(stream), "sha256": digest})
    assert sent.status_code == 200, sent.content
    assert status_of(target.agent, move).json()["sent"] is True
    assert post(target.agent, move, "received", {"bytes": len(stream), "sha256": "1" * 64}).status_code == 409
    assert Volume.objects.get(pk=vid).server_id == source.server_id
    with django_capture_on_commit_callbacks(execute=True):
        done = post(target.agent, move, "received", {"bytes": len(stream), "sha256": digest})
    assert done.status_code == 200 and done.json()["state"] == "done"
    assert post(target.agent, move, "received", {"bytes": len(stream), "sha256": digest}).status_code == 200
    volume = Volume.objects.get(pk=vid)
    assert volume.server_id == target.server_id and volume.price_per_gb_month == Decimal("0.25")
    assert not (settings.SUANLI_TRANSFER_DIR / str(move)).exists()  # staged chunks removed
    shown = alice.api.get(f"/api/v1/volumes/{vid}/").json()
    assert shown["server"] == target.server_id and shown["move"] is None and shown["state"] == "ready"
    # The source wipes its old copy; its disk stays taken until it reports it wiped.
    out = source.agent.desired()
    assert vid in out["volumes_to_wipe"] and vid not in [v["id"] for v in out["volumes"]]
    assert "volume_transfers_out" not in out
    assert vid in [v["id"] for v in target.agent.desired()["volumes"]]
    server = Server.objects.get(pk=source.server_id)
    assert volumes.storage_taken(server) == 10
    reported(target.agent, [{"id": vid, "state": "ready", "used_gb": 0.002}])  # the new copy, on its server
    reported(source.agent, [{"id": vid, "state": "wiped"}])
    assert VolumeMove.objects.get(pk=move).source_wiped_at is not None
    # The organisation's log records the old copy's wipe, like a volume's own, once.
    reported(source.agent, [{"id": vid, "state": "wiped"}])
    [logged] = OrgEvent.objects.filter(organization=alice.org, kind="volume_copy_wiped")
    assert logged.object_id == vid and logged.params["server"] == source.server_id and logged.params["move"] == move
    assert logged.params["wiped_at"] == VolumeMove.objects.get(pk=move).source_wiped_at.isoformat()
    assert f"copy on server {source.server_id}" in org_log.message(logged)
    assert volumes.storage_taken(server) == 0 and vid not in source.agent.desired()["volumes_to_wipe"]
    assert Volume.objects.get(pk=vid).state == "ready"  # the old copy's wipe is not the volume's
    # It can be mounted on its new server.
    lease = mount_lease(alice, [{"volume": vid, "path": "/data"}], offer=target.offer_id)
    assert lease.status_code == 201, lease.content


def test_a_stream_that_does_not_match_what_was_staged_starts_over(alice, source, target):
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    assert put_chunk(source.agent, move, 0, b"abc").status_code == 200
    wrong = post(source.agent, move, "sent", {"chunks": 1, "bytes": 3, "sha256": hashlib.sha256(b"abd").hexdigest()})
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "transfer_restart"
    assert status_of(source.agent, move).json()["chunks"] == 0
    assert put_chunk(source.agent, move, 0, b"abd").status_code == 200
    digest = hashlib.sha256(b"abd").hexdigest()
    assert post(source.agent, move, "sent", {"chunks": 1, "bytes": 3, "sha256": digest}).status_code == 200


def test_cancel_keeps_the_volume_and_wipes_the_targets_partial_copy(
    alice, source, target, settings, django_capture_on_commit_callbacks
):
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    assert put_chunk(source.agent, move, 0, b"x" * 100).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        cancelled = alice.api.delete(f"/api/v1/volumes/{vid}/move/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert alice.api.delete(f"/api/v1/volumes/{vid}/move/").json()["error"]["code"] == "no_move"
    assert not (settings.SUANLI_TRANSFER_DIR / str(move)).exists()
    assert put_chunk(source.agent, move, 1, b"y").json()["error"]["code"] == "move_over"
    assert Volume.objects.get(pk=vid).server_id == source.server_id
    assert vid in target.agent.desired()["volumes_to_wipe"]
    target_server = Server.objects.get(pk=target.server_id)
    assert volumes.storage_taken(target_server) == 10
    again = ask(alice, vid, target.server_id)
    assert again.status_code == 409 and again.json()["error"]["code"] == "volume_moving"  # its copy is there still
    reported(target.agent, [{"id": vid, "state": "wiped"}])
    assert volumes.storage_taken(target_server) == 0
    assert Volume.objects.get(pk=vid).state == "ready"
    [logged] = OrgEvent.objects.filter(organization=alice.org, kind="volume_copy_wiped")
    assert logged.params["server"] == target.server_id and logged.params["move"] == move
    assert ask(alice, vid, target.server_id).status_code == 202


def test_a_side_that_cannot_go_on_fails_the_move(alice, source, target):
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    failed = post(target.agent, move, "failed", {"message": "mkfs.ext4 is not installed"})
    assert failed.status_code == 200 and failed.json()["state"] == "failed"
    row = VolumeMove.objects.get(pk=move)
    assert row.message == "target server: mkfs.ext4 is not installed"
    assert volume_moves.live_move(Volume.objects.get(pk=vid)) is None


def test_bad_agent_requests_are_4xx(alice, source, target):
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    unsigned = source.agent.client.get(f"/api/v1/agent/volume-transfers/{move}/")
    assert unsigned.status_code == 401
    assert status_of(source.agent, "x").status_code == 404 and status_of(source.agent, 2**70).status_code == 404
    assert put_chunk(source.agent, move, "x", b"a").status_code == 404
    assert put_chunk(source.agent, move, 0, b"").status_code == 400
    assert put_chunk(source.agent, move, 0, b"a" * 4097).status_code == 400
    assert post(source.agent, move, "sent", {"chunks": -1, "bytes": 0, "sha256": "a" * 64}).status_code == 400
    assert post(source.agent, move, "sent", {"chunks": 0, "bytes": 0}).status_code == 400
    raw = b"[1]"
    listed = source.agent.client.post(
        f"/api/v1/agent/volume-transfers/{move}/sent/",
        data=raw,
        content_type="application/json",
        **source.agent._signed(raw),
    )
    assert listed.status_code == 400
    for hostile in (b"[" * 100_000 + b"]" * 100_000, b'{"chunks": NaN}', b"\xff"):
        answer = source.agent.client.post(
            f"/api/v1/agent/volume-transfers/{move}/sent/",
            data=hostile,
            content_type="application/json",
            **source.agent._signed(hostile),
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "malformed_request"


def test_a_volume_wiped_while_it_was_copied_is_not_switched(alice, source, target):
    """Its grace ran out during the copy (the wipe job sent it to wiping): the target's 'received' fails the move."""
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    data = b"copy"
    assert put_chunk(source.agent, move, 0, data).status_code == 200
    digest = hashlib.sha256(data).hexdigest()
    assert post(source.agent, move, "sent", {"chunks": 1, "bytes": 4, "sha256": digest}).status_code == 200
    Volume.objects.filter(pk=vid).update(state="wiping")
    answer = post(target.agent, move, "received", {"bytes": 4, "sha256": digest})
    assert answer.status_code == 200 and answer.json()["state"] == "failed"
    assert Volume.objects.get(pk=vid).server_id == source.server_id
    assert vid in target.agent.desired()["volumes_to_wipe"]  # its partial copy goes too


def test_a_volume_in_a_data_access_session_does_not_move(alice, source, target):
    from tests.workloads.conftest import add_key
    from workloads import data_access

    vid = ready_volume(alice, source)
    server = Server.objects.get(pk=source.server_id)
    key = add_key(alice)
    data_access.data_access_open(org=alice.org, user=alice.user, server=server, volumes=[vid], ssh_keys=[key["id"]])
    refused = ask(alice, vid, target.server_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "volume_in_use"


def test_a_moving_volume_opens_in_no_data_access_session(alice, source, target):
    from tests.workloads.conftest import add_key

    vid = ready_volume(alice, source)
    key = add_key(alice)["id"]
    assert ask(alice, vid, target.server_id).status_code == 202
    body = {"server": source.server_id, "volumes": [vid], "ssh_keys": [key]}
    refused = alice.api.post("/api/v1/data-access/", body, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "volume_moving"
    assert alice.api.delete(f"/api/v1/volumes/{vid}/move/").status_code == 200
    assert alice.api.post("/api/v1/data-access/", body, format="json").status_code == 201


def test_a_move_to_dearer_storage_is_admitted_at_its_price_and_402_without_the_money(alice, bob, h100, source, target):
    from tests.billing.test_balances import credit, prepaid
    from tests.workloads.conftest import enrolled_box

    cheaper = enrolled_box(bob, h100, name="box-3", prefix="b0x3")
    lend_storage(bob, cheaper, disk_gb=30, price="0.0500")
    vid = ready_volume(alice, source, size_gb=30)  # its first hour at 0.25 is a cent
    prepaid(alice.org)  # nothing paid in: what runs already is not stopped, but nothing dearer is admitted
    refused = ask(alice, vid, target.server_id)  # 0.25 a GB-month against 0.10 now
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_funds"
    assert not VolumeMove.objects.exists()
    assert volumes.storage_taken(Server.objects.get(pk=target.server_id)) == 0  # nothing reserved there
    assert ask(alice, vid, cheaper.server_id).status_code == 202  # cheaper storage spends no more
    assert alice.api.delete(f"/api/v1/volumes/{vid}/move/").status_code == 200
    reported(cheaper.agent, [{"id": vid, "state": "wiped"}])  # the cancelled move's partial copy
    credit(alice.org, "10.00", "W1")
    assert ask(alice, vid, target.server_id).status_code == 202
