"""Volumes with host access (agents/runtime/host.py, issue 16): a host-access workload's volume is loop-mounted by the
store like a container's, bind-mounted at its path under the allowed roots and handed to its lease user (writable
by that user, root-owned in a container's case), and given back to root when the workload goes; a path outside the
roots is refused. Real users, real loop and bind mounts: root only, like the other host and store tests."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from agents.runtime.host import HostRuntime
from agents.runtime.volumes import VolumeStore
from agents.workloads import Reconciler
from tests.agents import test_host_runtime
from tests.agents.fakes import DesiredSource, desired_state
from tests.agents.test_host_runtime import host_workload, settle
from tests.agents.test_volume_store import MIB, mounts_under
from tests.containers import make_keypair, require

lease_user = test_host_runtime.lease_user  # the fixture: a lease9<pid><n> user, removed afterwards
SIZE = 16  # "GB" of 1 MiB each (the store's unit in these tests)


@pytest.fixture
def roots(tmp_path):
    """The store's directory and the allowed mount root (under a directory anyone may pass through, as /mnt is:
    pytest's own tmp_path is root's alone); everything mounted under them is unmounted afterwards."""
    require("mkfs.ext4", "mount", "umount", "losetup", "chown", purpose="volumes with host access")
    base = Path(tempfile.mkdtemp(prefix="suanli-host-volumes-", dir="/tmp"))
    base.chmod(0o755)  # noqa: S103 - the lease user must reach the mount root, like /mnt
    made = (tmp_path / "volumes", base / "mnt")
    yield made
    for root in made:
        for point in sorted(mounts_under(root), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def with_volumes(version: int, *workloads: dict, volumes=(7,)) -> dict:
    body = desired_state(version, *workloads)
    body["volumes"] = [{"id": v, "size_gb": SIZE, "owner": "1"} for v in volumes]
    body["volumes_to_wipe"] = []
    return body


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_a_host_access_volume_is_writable_by_its_lease_user_and_given_back_to_root(lease_user, roots, tmp_path):
    store_dir, mount_root = roots
    store = VolumeStore(str(store_dir), unit=MIB)
    runtime = HostRuntime(str(tmp_path / "state"), volumes=store, mount_roots=(str(mount_root),))
    key = make_keypair(tmp_path / "k").public_text
    data = mount_root / "data"
    mounted = host_workload(31, lease_user, [key], volumes=[{"id": 7, "path": str(data), "size_gb": SIZE}])
    source = DesiredSource(with_volumes(1, mounted, volumes=(7, 8)))
    rec = Reconciler(source, runtime, str(tmp_path / "state"), poll=0.05, grace=1)

    settle(rec, 31, "running")
    entry = pwd.getpwnam(lease_user)
    assert os.path.ismount(data)
    assert owner_and_mode(data) == (entry.pw_uid, entry.pw_gid, 0o700)
    wrote = subprocess.run(["sh", "-c", f"echo mine > {data}/work.txt"], user=lease_user, capture_output=True)
    assert wrote.returncode == 0, wrote.stderr
    assert (store_dir / "7" / "work.txt").read_text() == "mine\n"  # in the volume, not on the host's disk
    # A volume no host user mounts stays as the store made it: root's, as a container's root wants it.
    assert owner_and_mode(store_dir / "8") == (0, 0, 0o755)
    assert runtime.observe()[31].volumes == (7,), "busy: the store never wipes it under the user"

    # The workload goes: unmounted, its mount point removed, the volume kept and its root given back to root.
    source.payload = with_volumes(2, volumes=(7, 8))
    settle(rec, 31, "cleaned")
    assert not os.path.exists(data) and not mounts_under(mount_root)
    assert owner_and_mode(store_dir / "7") == (0, 0, 0o755)
    assert (store_dir / "7" / "work.txt").read_text() == "mine\n"
    assert runtime.records == {}


def test_a_host_access_volume_outside_the_mount_roots_or_over_something_is_refused(lease_user, roots, tmp_path):
    store_dir, mount_root = roots
    store = VolumeStore(str(store_dir), unit=MIB)
    runtime = HostRuntime(str(tmp_path / "state"), volumes=store, mount_roots=(str(mount_root),))
    key = make_keypair(tmp_path / "k").public_text
    etc = host_workload(41, lease_user, [key], volumes=[{"id": 7, "path": "/etc/suanli-test", "size_gb": SIZE}])
    rec = Reconciler(DesiredSource(with_volumes(1, etc)), runtime, str(tmp_path / "state"), poll=0.05, grace=1)
    failed = settle(rec, 41, "failed")
    assert "with host access volumes go under" in failed.message and not os.path.exists("/etc/suanli-test")

    busy = mount_root / "busy"
    busy.mkdir(parents=True)
    (busy / "host-file").write_text("the provider's")
    other = host_workload(42, lease_user, [key], volumes=[{"id": 7, "path": str(busy), "size_gb": SIZE}])
    rec = Reconciler(DesiredSource(with_volumes(2, other)), runtime, str(tmp_path / "state"), poll=0.05, grace=1)
    failed = settle(rec, 42, "failed")
    assert "something is there already" in failed.message and not os.path.ismount(busy)
