"""Host access (agents/runtime/host.py): real users made with useradd, reached through a real OpenSSH sshd
(tests/containers.py), driven by the reconciler as the platform's desired state says. Root only (skipped
otherwise, failed under CI=true); the users are named lease9<pid><n> and removed afterwards whatever happens."""

from __future__ import annotations

import itertools
import os
import pwd
import stat
import subprocess
import threading
import time

import pytest

from agents.runtime.host import HostRuntime, write_authorized_keys
from agents.workloads import Reconciler
from tests.agents.fakes import DesiredSource, desired_state, desired_workload
from tests.containers import make_keypair, require, ssh_run

_numbers = itertools.count(1)


def host_workload(wid: int, user: str, keys: list[str], **fields) -> dict:
    defaults = {
        "lease": int(user.removeprefix("lease")),
        "access": "host",
        "gpus": ["GPU-aaaa"],
        "image": "",
        "ssh_keys": keys,
        "user": user,
    }
    return desired_workload(wid, **(defaults | fields))


def exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


@pytest.fixture
def lease_user():
    """A name for a lease user of this test (lease9<pid><n>); whatever remains of it is removed afterwards."""
    require("useradd", "userdel", "usermod", "pkill", "pgrep", purpose="host access users")
    name = f"lease9{os.getpid()}{next(_numbers)}"
    yield name
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True, check=False)


def spawn_as(user: str) -> tuple[subprocess.Popen, threading.Thread]:
    """A process of `user`, reaped by a thread as soon as it ends (a zombie would still be the user's process)."""
    process = subprocess.Popen(["sleep", "300"], user=user)
    reaper = threading.Thread(target=process.wait, daemon=True)
    reaper.start()
    return process, reaper


def ended(spawned: tuple[subprocess.Popen, threading.Thread]) -> bool:
    spawned[1].join(10)
    return spawned[0].returncode is not None


def settle(rec: Reconciler, wid: int, state: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        rec.tick()
        found = {w.id: w for w in rec.snapshot().workloads}
        if wid in found and found[wid].state == state:
            return found[wid]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {state}: {found}")
        time.sleep(0.05)


def test_a_lease_user_is_created_reached_by_ssh_stopped_started_and_removed_with_its_home_and_processes(
    lease_user, sshd, ssh_keypair, tmp_path
):
    state = str(tmp_path / "state")
    runtime = HostRuntime(state, ssh_port=sshd)
    source = DesiredSource(desired_state(1, host_workload(31, lease_user, [ssh_keypair.public_text])))
    rec = Reconciler(source, runtime, state, poll=0.05, grace=1)

    running = settle(rec, 31, "running")
    assert running.ports == {"22": sshd} and running.gpus == ("GPU-aaaa",)
    entry = pwd.getpwnam(lease_user)
    keys = os.path.join(entry.pw_dir, ".ssh", "authorized_keys")
    for path, mode in ((os.path.dirname(keys), 0o700), (keys, 0o600)):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, entry.pw_uid, entry.pw_gid), path
    assert entry.pw_shell in ("/bin/bash", "/bin/sh")
    login = ssh_run(sshd, ssh_keypair.private, "id -un", user=lease_user)
    assert (login.returncode, login.stdout.strip()) == (0, lease_user), login.stderr

    sleeper = spawn_as(lease_user)
    source.payload = desired_state(2, host_workload(31, lease_user, [ssh_keypair.public_text], desired="stopped"))
    stopped = settle(rec, 31, "exited")
    assert stopped.message == "stopped" and ended(sleeper)
    assert exists(lease_user), "stopped, not removed"
    refused = ssh_run(sshd, ssh_keypair.private, "true", user=lease_user, timeout=10)
    assert refused.returncode == 255, "an expired account lets nobody in"
    assert "Permission denied" in refused.stderr

    source.payload = desired_state(3, host_workload(31, lease_user, [ssh_keypair.public_text]))
    settle(rec, 31, "running")
    assert ssh_run(sshd, ssh_keypair.private, "true", user=lease_user).returncode == 0

    with open(os.path.join(entry.pw_dir, "work.txt"), "w") as fh:
        fh.write("kept across a restart\n")
    sleeper = spawn_as(lease_user)
    source.payload = desired_state(4, host_workload(31, lease_user, [ssh_keypair.public_text], generation=1))
    deadline = time.monotonic() + 30
    while next(w for w in rec.snapshot().workloads if w.id == 31).generation != 1 or runtime.ops.all():
        assert time.monotonic() < deadline, rec.snapshot()
        rec.tick()
        time.sleep(0.05)
    assert ended(sleeper), "a restart ends the user's processes"
    assert open(os.path.join(entry.pw_dir, "work.txt")).read() == "kept across a restart\n"
    # The restart's operation is over; the next tick observes the user and reports it running again.
    assert pwd.getpwnam(lease_user).pw_uid == entry.pw_uid and settle(rec, 31, "running").generation == 1

    sleeper = spawn_as(lease_user)
    source.payload = desired_state(5)
    settle(rec, 31, "cleaned")
    assert ended(sleeper) and not exists(lease_user) and not os.path.exists(entry.pw_dir)
    assert runtime.records == {} and rec.report_fields()["workloads_version"] == 5


def test_an_existing_lease_user_that_is_listed_is_adopted_not_created_again(lease_user, tmp_path):
    require("useradd", purpose="host access users")
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", lease_user], check=True, capture_output=True)
    home = pwd.getpwnam(lease_user).pw_dir
    with open(os.path.join(home, "work.txt"), "w") as fh:
        fh.write("the customer's work\n")
    key = make_keypair(tmp_path / "k").public_text
    state = str(tmp_path / "state")
    runtime = HostRuntime(state)
    rec = Reconciler(DesiredSource(desired_state(1, host_workload(31, lease_user, [key]))), runtime, state, poll=0.05)
    settle(rec, 31, "running")
    assert open(os.path.join(home, "work.txt")).read() == "the customer's work\n"
    assert open(os.path.join(home, ".ssh", "authorized_keys")).read() == key + "\n"
    assert runtime.records[lease_user]["workload"] == 31


def test_users_that_are_not_ours_are_never_touched(lease_user, tmp_path):
    require("useradd", purpose="host access users")
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", lease_user], check=True, capture_output=True)
    state = str(tmp_path / "state")
    runtime = HostRuntime(state)
    as_root = {**host_workload(32, "lease1", ["k"]), "user": "root"}
    source = DesiredSource(desired_state(1, as_root))
    rec = Reconciler(source, runtime, state, poll=0.05)
    failed = settle(rec, 32, "failed")
    assert failed.message == "refusing the user name 'root': host access users are named lease<N>"
    rec.tick()
    assert exists(lease_user), "a lease<N> user this agent did not create and the platform does not list stays"
    assert exists("root") and runtime.observe().keys() == {32}


def test_a_system_user_named_like_ours_is_not_adopted(tmp_path):
    class Entry:
        pw_uid, pw_gid, pw_dir = 5, 5, "/nonexistent"

    runtime = HostRuntime(str(tmp_path), getpwnam=lambda name: Entry(), check_root=False, run=None)
    rec = Reconciler(
        DesiredSource(desired_state(1, host_workload(31, "lease42", ["k"]))), runtime, str(tmp_path), poll=0.05
    )
    failed = settle(rec, 31, "failed")
    assert failed.message == "refusing to adopt the system user lease42 (uid 5)" and runtime.records == {}


def test_keys_are_written_without_following_links_the_user_planted(tmp_path):
    me = os.getuid(), os.getgid()
    home = tmp_path / "home"
    home.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (home / ".ssh").symlink_to(target)
    with pytest.raises(OSError):
        write_authorized_keys(str(home), *me, ("ssh-ed25519 AAAA k",))
    assert list(target.iterdir()) == []

    (home / ".ssh").unlink()
    (home / ".ssh").mkdir()
    precious = tmp_path / "precious"
    precious.write_text("do not overwrite\n")
    os.link(precious, home / ".ssh" / "authorized_keys")  # a hard link to a file the user must not change
    write_authorized_keys(str(home), *me, ("ssh-ed25519 AAAA k",))
    assert precious.read_text() == "do not overwrite\n"
    assert (home / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 AAAA k\n"
