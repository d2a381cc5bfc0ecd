"""The agent's side of volume moves (agents/transfers.py): the tar stream is the same bytes for the same files, the
unpacking filter keeps every member inside the volume, and two agents' Transfers copy a directory through the real
platform (live server, signed requests, the staging directory): whole, resumed after a restart from the chunks the
platform has, and started over when the stream came out otherwise. The volumes are plain directories here (the
loop-mounted ones are tests/test_volume_move_end_to_end.py's)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from agents.client import Client
from agents.runtime.volumes import READY, Volumes, VolumeStatus
from agents.transfers import Transfers, safe_member, write_tar
from tests.factories import GpuModelFactory
from tests.workloads.conftest import H100, enrolled_box
from tests.workloads.test_volumes_api import lend_storage
from workloads.models import Volume, VolumeMove


def fill(directory: Path) -> None:
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "notes.txt").write_text("hello from A\n")
    (directory / "blob").write_bytes(hashlib.sha512(b"x").digest() * 2000)  # 128 000 bytes
    os.symlink("sub/notes.txt", directory / "link")
    os.symlink("/etc/passwd", directory / "abs-link")  # the customer's own link: kept as it is, never followed
    os.link(directory / "blob", directory / "blob-again")
    os.mkfifo(directory / "pipe")  # not data: left out
    os.chmod(directory / "sub" / "notes.txt", 0o4755)  # noqa: S103 - set-uid, which the copy drops


def tar_bytes(directory: Path) -> bytes:
    out = io.BytesIO()
    write_tar(str(directory), out)
    return out.getvalue()


def test_the_same_files_make_the_same_stream_and_pipes_are_left_out(tmp_path):
    fill(tmp_path / "v")
    first, second = tar_bytes(tmp_path / "v"), tar_bytes(tmp_path / "v")
    assert first == second
    names = tarfile.open(fileobj=io.BytesIO(first)).getnames()
    assert names == ["sub", "abs-link", "blob", "blob-again", "link", "sub/notes.txt"]  # sorted; no pipe


def test_the_filter_keeps_every_member_inside_and_drops_set_uid(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()

    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = kind, link, mode
        return info

    assert safe_member(member("/etc/cron.d/x"), str(dest)).name == "etc/cron.d/x"  # inside, under its name
    assert safe_member(member("../outside"), str(dest)) is None
    assert safe_member(member("dev", tarfile.CHRTYPE), str(dest)) is None
    assert safe_member(member("hard", tarfile.LNKTYPE, "/etc/shadow"), str(dest)) is None
    assert safe_member(member("abs", tarfile.SYMTYPE, "/etc/passwd"), str(dest)).linkname == "/etc/passwd"
    os.symlink("/etc", dest / "escape")  # a link already unpacked: nothing is written through it
    assert safe_member(member("escape/evil"), str(dest)) is None
    assert safe_member(member("ok", mode=0o6755), str(dest)).mode == 0o755


class DirVolumes(Volumes):
    """Volumes that are plain directories, ready at once (the transfer code asks only status and path)."""

    name = "dirs"

    def __init__(self, paths: dict[int, Path]):
        super().__init__()
        self.paths = paths

    def sync(self, wanted, wipe, busy=()) -> None:
        pass

    def statuses(self) -> dict[int, VolumeStatus]:
        return {vid: VolumeStatus(vid, READY) for vid in self.paths}

    def path(self, volume_id: int) -> str | None:
        return str(self.paths[volume_id]) if volume_id in self.paths else None


@pytest.fixture
def pair(bob, alice, settings, tmp_path):
    h100 = GpuModelFactory(slug="tr-h100", name="TR H100", nvml_names=[H100])
    settings.SUANLI_TRANSFER_DIR = tmp_path / "transfers"
    settings.SUANLI_TRANSFER_CHUNK_BYTES = 16384
    boxes = [enrolled_box(bob, h100, name=f"tr-{i}", prefix=f"tr{i}x") for i in range(2)]
    for box in boxes:
        lend_storage(bob, box, disk_gb=50)
    made = alice.api.post(
        "/api/v1/volumes/", {"name": "data", "server": boxes[0].server_id, "size_gb": 1}, format="json"
    )
    vid = made.json()["id"]
    Volume.objects.filter(pk=vid).update(state="ready")
    return boxes, vid


def run_transfers(live_server, boxes, vid, source_dir: Path, target_dir: Path) -> None:
    sides = []
    for box, directory in zip(boxes, (source_dir, target_dir), strict=True):
        client = Client(live_server.url, box.agent.agent_id, box.agent.secret)
        sides.append((Transfers(client, DirVolumes({vid: directory})), box))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for transfers, box in sides:
            transfers.sync(box.agent.desired())
        if Volume.objects.get(pk=vid).server_id == boxes[1].server_id:
            break
        time.sleep(0.2)
    for transfers, _box in sides:
        transfers.stop()
        transfers.wait(10)
    assert Volume.objects.get(pk=vid).server_id == boxes[1].server_id, "not switched"


def same_tree(a: Path, b: Path) -> None:
    assert (b / "sub" / "notes.txt").read_text() == "hello from A\n"
    assert (b / "blob").read_bytes() == (a / "blob").read_bytes()
    assert os.readlink(b / "link") == "sub/notes.txt" and os.readlink(b / "abs-link") == "/etc/passwd"
    assert os.stat(b / "blob").st_ino == os.stat(b / "blob-again").st_ino  # the hard link kept
    assert os.stat(b / "sub" / "notes.txt").st_mode & 0o7777 == 0o755  # no set-uid
    assert not (b / "pipe").exists()


@pytest.mark.django_db(transaction=True)
def test_two_agents_copy_a_volume_through_the_platform(live_server, alice, pair, tmp_path):
    boxes, vid = pair
    fill(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "stale").write_text("left from before")  # a fresh volume holds only the copy
    asked = alice.api.post(
        f"/api/v1/volumes/{vid}/move/", {"server": boxes[1].server_id, "consent": True}, format="json"
    )
    assert asked.status_code == 202, asked.content
    run_transfers(live_server, boxes, vid, tmp_path / "a", tmp_path / "b")
    same_tree(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "b" / "stale").exists()
    move = VolumeMove.objects.get(pk=asked.json()["id"])
    assert move.chunks == -(-move.bytes_total // 16384) and move.bytes_done == move.bytes_total


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("changed", [False, True], ids=["resumed", "started-over"])
def test_a_restarted_source_resumes_from_the_platforms_chunks_or_starts_over(
    live_server, alice, pair, tmp_path, changed
):
    """Two chunks staged before a 'restart' (by the same stream, or by one of files that changed since): the new
    source sends from chunk 2, and the whole stream's digest tells whether the platform's copy is whole."""
    from tests.workloads.test_volume_moves import put_chunk

    boxes, vid = pair
    fill(tmp_path / "a")
    (tmp_path / "b").mkdir()
    asked = alice.api.post(
        f"/api/v1/volumes/{vid}/move/", {"server": boxes[1].server_id, "consent": True}, format="json"
    )
    move = asked.json()["id"]
    before = tar_bytes(tmp_path / "a")
    if changed:
        (tmp_path / "a" / "blob").write_bytes(hashlib.sha512(b"y").digest() * 2000)
    for n in range(2):
        assert put_chunk(boxes[0].agent, move, n, before[n * 16384 : (n + 1) * 16384]).status_code == 200
    run_transfers(live_server, boxes, vid, tmp_path / "a", tmp_path / "b")
    same_tree(tmp_path / "a", tmp_path / "b")
    row = VolumeMove.objects.get(pk=move)
    assert row.digest == hashlib.sha256(tar_bytes(tmp_path / "a")).hexdigest()
