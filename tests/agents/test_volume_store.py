"""Volumes on the host for real (agents/runtime/volumes.py): sparse ext4 images loop-mounted under the agent's
directory, made by this machine's own mkfs.ext4 and mount, as root. The protocol's sizes are whole GB; these tests
give the store a "GB" of 1 MiB (`unit`), so a "64 GB" volume is 64 MiB and filling it takes a moment. The failure
paths (no root, no mkfs) and the simulated and unsupported kinds need nothing of the host."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agents.runtime.base import VolumeWanted
from agents.runtime.volumes import (
    CREATING,
    FAILED,
    GB,
    READY,
    WIPED,
    WIPED_REPORTS,
    WIPING,
    MemoryVolumes,
    UnsupportedVolumes,
    VolumeStore,
)
from tests.containers import require

MIB = 2**20
SIZE = 64  # "GB" of the test unit: MiB


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == str(root) or p.startswith(str(root) + "/")]


@pytest.fixture
def directory(tmp_path) -> Path:
    """The store's directory; whatever is still mounted under it is unmounted afterwards."""
    require("mkfs.ext4", "mount", "umount", "losetup", purpose="loop-mounted volumes")
    root = tmp_path / "volumes"
    yield root
    for point in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)


def store(directory: Path, **kw) -> VolumeStore:
    return VolumeStore(str(directory), unit=MIB, **kw)


def settle(s, wanted=(), wipe=(), busy=(), until=None, timeout: float = 30.0) -> dict:
    """Sync until `until(statuses)` holds (every volume ready or wiped, by default)."""
    until = until or (lambda st: all(v.state in (READY, WIPED, FAILED) for v in st.values()))
    deadline = time.monotonic() + timeout
    while True:
        s.sync(wanted, wipe, busy)
        s.wait(10)
        statuses = s.statuses()
        if until(statuses):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last: {statuses}")
        time.sleep(0.05)


def fstype(point: Path) -> str:
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(point)], capture_output=True, text=True)
    return found.stdout.strip()


def loops_of(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.strip()


def test_a_volume_is_a_sparse_ext4_image_loop_mounted_that_a_new_store_mounts_again(directory):
    s = store(directory)
    statuses = settle(s, [VolumeWanted(7, SIZE)])
    assert statuses[7].state == READY and statuses[7].message == ""
    image, point = directory / "7.img", directory / "7"
    assert s.path(7) == str(point) and os.path.ismount(point)
    assert fstype(point).startswith("ext4 ") and "nosuid" in fstype(point) and "nodev" in fstype(point)
    assert image.stat().st_size == SIZE * MIB
    assert image.stat().st_blocks * 512 < SIZE * MIB / 2  # sparse: the host's disk holds only what is written
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert not list(directory.glob("*.new"))
    (point / "kept.txt").write_text("still here")

    # The agent restarted: a new store on the same directory changes nothing.
    again = store(directory)
    assert settle(again, [VolumeWanted(7, SIZE)])[7].state == READY
    assert (point / "kept.txt").read_text() == "still here"

    # The host rebooted (nothing mounted): a new store mounts the image it finds, before any desired state.
    subprocess.run(["umount", str(point)], check=True)
    assert not os.path.ismount(point) and not (point / "kept.txt").exists()
    after = store(directory)
    assert os.path.ismount(point) and (point / "kept.txt").read_text() == "still here"
    assert after.statuses()[7].state == READY
    assert [e["id"] for e in after.report()] == [7]


def test_the_same_desired_volumes_twice_change_nothing(directory):
    calls: list[list[str]] = []

    def run(argv):
        calls.append(argv)
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    s = store(directory, run=run)
    settle(s, [VolumeWanted(7, SIZE)])
    made = [c[0] for c in calls]
    assert made[0].endswith(("mkfs.ext4", "mke2fs")) and made[1:] == ["mount"]
    inode = (directory / "7.img").stat().st_ino
    for _ in range(3):
        settle(s, [VolumeWanted(7, SIZE)])
    assert len(calls) == 2 and (directory / "7.img").stat().st_ino == inode


def test_used_gb_rises_and_a_write_past_its_size_gets_enospc_without_filling_the_host(directory):
    s = store(directory)
    settle(s, [VolumeWanted(7, SIZE)])
    point = directory / "7"
    empty = s.statuses()[7].used_bytes
    free_before = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize

    wrote = subprocess.run(
        ["dd", "if=/dev/zero", f"of={point}/some", "bs=1M", "count=16", "conv=fsync"], capture_output=True, text=True
    )
    assert wrote.returncode == 0, wrote.stderr
    used = s.statuses()[7].used_bytes
    assert used - empty >= 16 * MIB
    (entry,) = s.report()
    assert entry == {"id": 7, "state": READY, "used_gb": round(used / GB, 3), "message": ""}

    past = subprocess.run(
        ["dd", "if=/dev/zero", f"of={point}/more", "bs=1M", f"count={SIZE + 16}", "conv=fsync"],
        capture_output=True,
        text=True,
    )
    assert past.returncode != 0 and "No space left on device" in past.stderr
    full = s.statuses()[7].used_bytes
    assert full > (SIZE - 12) * MIB  # nearly all of it (ext4 keeps a little for its own metadata)
    free_after = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    # Other helpers write on this disk too: allow them 64 MiB on top of the volume's size.
    assert free_before - free_after <= SIZE * MIB + 64 * MIB
    assert (directory / "7.img").stat().st_blocks * 512 <= SIZE * MIB


def test_a_wipe_destroys_the_image_and_the_same_id_made_again_is_empty(directory):
    s = store(directory)
    settle(s, [VolumeWanted(7, SIZE), VolumeWanted(8, SIZE)])
    (directory / "7" / "secret.txt").write_text("customer data")
    image = directory / "7.img"

    statuses = settle(s, [VolumeWanted(8, SIZE)], [7])
    assert statuses[7].state == WIPED and statuses[8].state == READY
    assert not image.exists() and not (directory / "7").exists() and not list(directory.glob("7.img*"))
    assert loops_of(image) == ""
    assert s.path(7) is None
    # Reported wiped in WIPED_REPORTS reports after the platform stops asking, then forgotten.
    for _ in range(WIPED_REPORTS):
        s.sync([VolumeWanted(8, SIZE)], [])
        assert {e["id"]: e["state"] for e in s.report()} == {7: WIPED, 8: READY}
    assert {e["id"] for e in s.report()} == {8}

    made = settle(s, [VolumeWanted(7, SIZE), VolumeWanted(8, SIZE)])
    assert made[7].state == READY
    assert sorted(os.listdir(directory / "7")) == ["lost+found"]
    assert {e["id"]: e["state"] for e in s.report()} == {7: READY, 8: READY}


def test_a_volume_still_mounted_by_a_workload_is_wiped_only_after_the_workload_is_gone(directory):
    s = store(directory)
    settle(s, [VolumeWanted(7, SIZE)])
    for _ in range(3):
        s.sync([], [7], busy={7})
        s.wait(5)
    status = s.statuses()[7]
    assert status.state == WIPING and "workload" in status.message
    assert os.path.ismount(directory / "7") and (directory / "7.img").exists()
    assert [e["id"] for e in s.report()] == []  # neither ready nor wiped: nothing said yet
    assert settle(s, [], [7])[7].state == WIPED
    assert not (directory / "7.img").exists()


def test_a_wipe_cut_short_is_finished_by_the_next_store_and_a_half_made_image_removed(directory):
    settle(store(directory), [VolumeWanted(7, SIZE)])
    subprocess.run(["umount", str(directory / "7")], check=True)
    os.rename(directory / "7.img", directory / "7.img.wipe")  # the agent died right after renaming it
    (directory / "9.img.new").write_bytes(b"\0" * 4096)  # and another while formatting
    s = store(directory)
    assert not list(directory.glob("7.img*")) and not (directory / "9.img.new").exists()
    assert settle(s, [], [7])[7].state == WIPED
    assert [e for e in s.report() if e["id"] == 7][0]["state"] == WIPED


def test_an_image_the_platform_neither_wants_nor_wipes_is_kept(directory):
    settle(store(directory), [VolumeWanted(7, SIZE)])
    s = store(directory)
    statuses = settle(s, [], [])
    assert statuses[7].state == READY and (directory / "7.img").exists()


def test_without_mkfs_or_root_each_volume_fails_with_what_is_missing_and_nothing_raises(tmp_path):
    no_mkfs = VolumeStore(str(tmp_path / "a"), unit=MIB, root=True, mkfs="")
    statuses = settle(no_mkfs, [VolumeWanted(7, SIZE)])
    assert statuses[7].state == FAILED and "install e2fsprogs" in statuses[7].message
    assert no_mkfs.report() == [{"id": 7, "state": FAILED, "used_gb": 0.0, "message": statuses[7].message}]
    assert not os.listdir(tmp_path / "a")

    not_root = VolumeStore(str(tmp_path / "b"), unit=MIB, root=False)
    statuses = settle(not_root, [VolumeWanted(7, SIZE)])
    assert statuses[7].state == FAILED and "run as root" in statuses[7].message


def test_a_failed_volume_is_tried_again_after_retry_s(tmp_path):
    now = [0.0]
    calls: list[list[str]] = []

    def run(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "mke2fs: Device size reported to be zero.")

    s = VolumeStore(str(tmp_path / "v"), unit=MIB, root=True, mkfs="/sbin/mkfs.ext4", run=run, clock=lambda: now[0])
    statuses = settle(s, [VolumeWanted(7, SIZE)])
    assert statuses[7].state == FAILED
    assert (
        statuses[7].message
        == "cannot format its image: mkfs.ext4 exited with 1: mke2fs: Device size reported to be zero."
    )
    assert not list((tmp_path / "v").iterdir())  # the half-made image is gone
    s.sync([VolumeWanted(7, SIZE)], [])
    s.wait(5)
    assert len(calls) == 1
    now[0] = 61.0
    s.sync([VolumeWanted(7, SIZE)], [])
    s.wait(5)
    assert len(calls) == 2


def test_a_store_whose_directory_cannot_be_made_fails_its_volumes(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    s = VolumeStore(str(tmp_path / "file" / "volumes"), unit=MIB, root=True)
    s.sync([VolumeWanted(7, SIZE)], [])
    statuses = s.statuses()
    assert statuses[7].state == FAILED and "cannot use the volumes directory" in statuses[7].message


def test_simulated_volumes_are_ready_and_wiped_at_once():
    v = MemoryVolumes()
    v.sync([VolumeWanted(7, 10)], [])
    assert v.report() == [{"id": 7, "state": READY, "used_gb": 0.0, "message": ""}]
    v.sync([], [7], busy={7})
    assert v.statuses()[7].state == WIPING and v.report() == []
    v.sync([], [7])
    assert v.report() == [{"id": 7, "state": WIPED, "used_gb": 0.0, "message": ""}]
    v.sync([VolumeWanted(7, 10)], [])
    assert v.statuses()[7].state == READY


def test_a_runtime_without_volumes_fails_them_with_the_reason():
    v = UnsupportedVolumes("volumes are not supported here")
    v.sync([VolumeWanted(7, 10)], [8])
    assert {e["id"]: (e["state"], e["message"]) for e in v.report()} == {
        7: (FAILED, "volumes are not supported here"),
        8: (WIPED, ""),
    }
    assert v.path(7) is None


def test_a_volume_being_made_is_not_reported_until_it_is_ready(directory):
    release = threading.Event()

    def run(argv):
        if "mount" not in argv[0]:
            release.wait(10)  # a slow mkfs
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    s = store(directory, run=run)
    s.sync([VolumeWanted(7, SIZE)], [])
    deadline = time.monotonic() + 5
    while s.statuses()[7].message != "formatting" and time.monotonic() < deadline:
        time.sleep(0.01)
    status = s.statuses()[7]
    assert (status.state, status.message) == (CREATING, "formatting") and s.report() == []
    assert s.path(7) is None
    release.set()
    assert settle(s, [VolumeWanted(7, SIZE)])[7].state == READY
