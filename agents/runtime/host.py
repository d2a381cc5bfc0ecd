"""Whole-server access: a Linux user per lease on the host itself, reached over the host's own SSH server.

- Create: `useradd -m -s /bin/bash -p '*' <user>` (/bin/sh where there is no bash; the password `*` matches no
  password but, unlike useradd's default `!`, is not a locked account, which sshd without PAM would refuse even by
  key), then the lease's keys in
  `~<user>/.ssh/authorized_keys` (directory 0700, file 0600, both owned by the user; written without following links
  the user could have planted). The workload is `running` with ports {"22": <ssh_port>}.
- Restart (a new generation): the user's processes get SIGTERM, `grace` seconds, then SIGKILL; the home stays.
- Stop (`desired: stopped`): the account expires (`usermod -e 1`, which sshd honours), the user's processes get SIGTERM,
  `grace` seconds, then SIGKILL until none is left. Starting again un-expires it.
- Remove: the account expires, the processes are killed the same way, then `userdel -r <user>` removes the user with
  its home.

Volumes (issue 16): the same loop-mounted store as the Docker runtime (`VolumeStore`, `<state_dir>/volumes`). A
workload's volume is bind-mounted (`mount --bind`) at its path on the host, which must lie under one of `mount_roots`
(/data, /mnt, /srv, /scratch, /workspace: never over the system's own directories) and be missing or an empty
directory. The volume is handed to the lease user: everything in it, its root included, is chowned to the user
(`chown -R -h -P`: symbolic links themselves, never what they point at) and its root made 0700, since that user, not
root, writes there (in a container root does, and the store leaves it root's). Removing the workload unmounts it,
removes the mount point it made and gives the volume's root back to root (0755), so that a later user who gets the
same uid is handed nothing. The record file keeps each user's mounts, so a restarted agent unmounts them too.

Only users named `lease<N>` are ever touched, and only those in the record file `<state_dir>/host-users.json` (users
this agent created, or adopted: an existing `lease<N>` user that the desired state lists is adopted rather than
created again, so a restarted agent keeps the customer's session). System users (uid below 1000) are never adopted.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from agents.runtime.base import (
    EXITED,
    FAILED,
    PENDING,
    RUNNING,
    STARTING,
    STOPPING,
    Observed,
    Operation,
    Operations,
    Runtime,
    RuntimeUnavailable,
    WorkloadSpec,
)
from agents.runtime.volumes import Volumes, VolumeStore
from agents.spool import atomic_write

log = logging.getLogger("suanli.agent.workloads")

RECORD_FILE = "host-users.json"
USER_RE = re.compile(r"^lease[0-9]{1,12}$")
UID_MIN = 1000
KILL_ROUNDS = 50
COMMAND_TIMEOUT_S = 60
# Where a host-access workload's volumes may be mounted: under these, never over the system's own directories.
MOUNT_ROOTS = ("/data", "/mnt", "/srv", "/scratch", "/workspace")


def user_for(spec: WorkloadSpec) -> str:
    return spec.user or f"lease{spec.lease}"


class HostRuntime(Runtime):
    name = "host"

    def __init__(
        self,
        state_dir: str,
        *,
        ssh_port: int = 22,
        run: Callable[..., subprocess.CompletedProcess[str]] | None = None,
        getpwnam: Callable[[str], Any] = pwd.getpwnam,
        sleep: Callable[[float], Any] = time.sleep,
        check_root: bool = True,
        volumes: Volumes | None = None,
        mount_roots: tuple[str, ...] = MOUNT_ROOTS,
    ):
        if check_root and os.geteuid() != 0:
            raise RuntimeUnavailable("the host runtime creates users: run the agent as root")
        self.state_dir = state_dir
        self.ssh_port = ssh_port
        self.volumes = volumes or VolumeStore(os.path.join(state_dir, "volumes"))
        self.mount_roots = tuple(os.path.normpath(root) for root in mount_roots)
        self._run = run or _run
        self.getpwnam = getpwnam
        self.sleep = sleep
        self.ops = Operations()
        self._lock = threading.Lock()
        self._failures: dict[int, tuple[WorkloadSpec, str]] = {}
        self.path = os.path.join(state_dir, RECORD_FILE)
        self.records: dict[str, dict[str, Any]] = self._load()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "ssh_port": self.ssh_port, "users": sorted(self.records)}

    # -- observing ----------------------------------------------------------------------------------------------

    def observe(self) -> dict[int, Observed]:
        found: dict[int, Observed] = {}
        with self._lock:
            records = {user: dict(r) for user, r in self.records.items()}
            failures = dict(self._failures)
        for user, record in records.items():
            exists = self._exists(user)
            state = (EXITED if record.get("stopped") else RUNNING) if exists else EXITED
            message = ("stopped" if record.get("stopped") else "") if exists else f"the user {user} no longer exists"
            found[record["workload"]] = Observed(
                id=record["workload"],
                state=state,
                lease=record.get("lease"),
                spec_hash=record.get("spec", ""),
                generation=record.get("generation", 0),
                ports={"22": self.ssh_port} if exists and not record.get("stopped") else {},
                message=message,
                gpus=tuple(record.get("gpus") or ()),
                volumes=tuple(int(volume_id) for volume_id, _path in record.get("mounts") or ()),
            )
        for workload_id, (spec, message) in failures.items():
            before = found.get(workload_id)
            if before is not None and before.state == RUNNING:
                continue
            # A failure after the user was recorded (a volume that would not mount) says why, not just "stopped".
            found[workload_id] = Observed(
                id=workload_id,
                state=FAILED,
                lease=spec.lease,
                spec_hash=spec.spec_hash,
                generation=spec.generation,
                message=message,
                gpus=spec.gpus,
                volumes=before.volumes if before is not None else (),
            )
        for workload_id, op in self.ops.all().items():
            before = found.get(workload_id)
            spec = op.spec
            found[workload_id] = Observed(
                id=workload_id,
                state=op.state,
                lease=before.lease if before else (spec.lease if spec else None),
                spec_hash=before.spec_hash if before else (spec.spec_hash if spec else ""),
                generation=before.generation if before else (spec.generation if spec else 0),
                message=op.message,
                gpus=before.gpus if before else (spec.gpus if spec else ()),
                busy=True,
            )
        return found

    # -- requests -----------------------------------------------------------------------------------------------

    def ensure(self, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        user = user_for(spec)
        with self._lock:
            record = self.records.get(user)
            failed = self._failures.get(spec.id)
        if failed is not None and failed[0] == spec:
            return  # a user name or a system we refuse does not change by asking again
        if not USER_RE.match(user):
            self._fail(spec, f"refusing the user name {user!r}: host access users are named lease<N>")
            return
        if record is not None and record["workload"] != spec.id:
            self._fail(spec, f"the user {user} belongs to workload {record['workload']}")
            return
        if record is not None and self._exists(user) and not record.get("stopped"):
            return
        self.ops.begin(spec.id, "create", STARTING if record else PENDING, lambda op: self._create(op, spec), spec)

    def restart(self, spec: WorkloadSpec, grace: float) -> None:
        """End the user's processes (SIGTERM, grace, SIGKILL) and open the account again; the home stays."""
        user = self._user_of(spec.id)
        if user is None:
            self.ensure(spec, None)
            return
        self.ops.begin(spec.id, "restart", STARTING, lambda op: self._restart(op, user, spec, grace), spec)

    def stop(self, workload_id: int, grace: float) -> None:
        user = self._user_of(workload_id)
        if user is not None:
            self.ops.begin(workload_id, "stop", STOPPING, lambda op: self._stop(op, user, grace))

    def remove(self, workload_id: int, grace: float) -> None:
        with self._lock:
            self._failures.pop(workload_id, None)
        user = self._user_of(workload_id)
        if user is not None:
            self.ops.begin(workload_id, "remove", STOPPING, lambda op: self._remove(op, user, grace))

    # -- operations -----------------------------------------------------------------------------------------------

    def _create(self, op: Operation, spec: WorkloadSpec) -> None:
        user = user_for(spec)
        problem = self._mounts_refused(user, spec)
        if problem:
            self._fail(spec, problem)
            return
        entry = self._lookup(user)
        with self._lock:
            known = user in self.records
        if entry is None:
            shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
            result = self._run(["useradd", "-m", "-s", shell, "-p", "*", "-c", f"Suanli lease {spec.lease}", user])
            if result.returncode != 0:
                self._fail(spec, f"useradd {user} failed: {(result.stderr or result.stdout).strip()[:300]}")
                return
            entry = self._lookup(user)
            if entry is None:
                self._fail(spec, f"useradd {user} reported success but the user does not exist")
                return
            log.info("workload %s: created the user %s", spec.id, user)
        elif not known:
            if entry.pw_uid < UID_MIN:
                self._fail(spec, f"refusing to adopt the system user {user} (uid {entry.pw_uid})")
                return
            log.info("workload %s: adopted the existing user %s", spec.id, user)
        self._record(user, spec, stopped=True)  # recorded before anything else, so a crash leaves it ours
        try:
            write_authorized_keys(entry.pw_dir, entry.pw_uid, entry.pw_gid, spec.ssh_keys)
        except OSError as exc:
            self._fail(spec, f"cannot write {entry.pw_dir}/.ssh/authorized_keys: {exc}")
            return
        for mount in spec.volumes:
            error = self._mount_volume(user, mount.id, mount.path, entry.pw_uid, entry.pw_gid)
            if error:
                self._fail(spec, error)
                return
        result = self._run(["usermod", "-e", "", user])  # open the account (again)
        if result.returncode != 0:
            self._fail(spec, f"usermod {user} failed: {(result.stderr or result.stdout).strip()[:300]}")
            return
        self._record(user, spec, stopped=False)
        with self._lock:
            self._failures.pop(spec.id, None)

    def _restart(self, op: Operation, user: str, spec: WorkloadSpec, grace: float) -> None:
        self._kill(user, grace)
        log.info("workload %s: the processes of %s ended for a restart", spec.id, user)
        self._create(op, spec)

    def _stop(self, op: Operation, user: str, grace: float) -> None:
        with self._lock:
            if user in self.records:
                self.records[user]["stopped"] = True
                self._save()
        self._run(["usermod", "-e", "1", user])  # an expired account: sshd lets nobody in
        self._kill(user, grace)
        log.info("host user %s stopped: account expired, processes ended", user)

    def _remove(self, op: Operation, user: str, grace: float) -> None:
        if self._exists(user):
            self._run(["usermod", "-e", "1", user])
            self._kill(user, grace)
        error = self._unmount_volumes(user)
        if error:
            op.message = error
            log.error("%s", error)
            return
        if self._exists(user):
            result = self._run(["userdel", "-r", user])
            for _ in range(KILL_ROUNDS):
                if not self._exists(user):
                    break
                self._kill(user, 0)  # a process that appeared meanwhile (userdel refuses while one runs)
                result = self._run(["userdel", "-r", user])
            if self._exists(user):
                op.message = f"userdel {user} failed: {(result.stderr or result.stdout).strip()[:300]}"
                log.error("%s", op.message)
                return
            log.info("host user %s removed with its home", user)
        with self._lock:
            self.records.pop(user, None)
            self._save()

    def _kill(self, user: str, grace: float) -> None:
        """SIGTERM to every process of the user, up to `grace` seconds, then SIGKILL until none is left."""
        if self._run(["pkill", "-TERM", "-u", user]).returncode == 0:
            waited = 0.0
            while waited < grace and self._run(["pgrep", "-u", user]).returncode == 0:
                self.sleep(0.5)
                waited += 0.5
        for _ in range(KILL_ROUNDS):
            if self._run(["pkill", "-KILL", "-u", user]).returncode != 0:  # 1: no process matched
                return
            self.sleep(0.1)
        log.error("the processes of %s survive SIGKILL", user)

    # -- volumes ------------------------------------------------------------------------------------------------

    def _mounts_refused(self, user: str, spec: WorkloadSpec) -> str:
        """Why the workload's volumes cannot be mounted where it asks ("" if they can): outside the mount roots, or
        over something already there (a mount of this user's own, from before a restart, is fine)."""
        with self._lock:
            mounts = [tuple(m) for m in self.records.get(user, {}).get("mounts") or ()]
        for mount in spec.volumes:
            where = os.path.normpath(mount.path)
            if not any(where == root or where.startswith(root + "/") for root in self.mount_roots):
                roots = ", ".join(self.mount_roots)
                return f"refusing to mount volume {mount.id} at {where}: with host access volumes go under {roots}"
            if (mount.id, where) in mounts:
                continue
            if os.path.islink(where) or (os.path.exists(where) and (not os.path.isdir(where) or os.listdir(where))):
                return f"refusing to mount volume {mount.id} at {where}: something is there already"
        return ""

    def _mount_volume(self, user: str, volume_id: int, path: str, uid: int, gid: int) -> str:
        """Bind-mount the volume at `path` (checked by `_mounts_refused`) and hand it to the user; "" when done (or
        done before), else why not."""
        where = os.path.normpath(path)
        source = self.volumes.path(volume_id)
        if source is None:
            return f"volume {volume_id} is not ready on this host"
        with self._lock:
            mounts = [tuple(m) for m in self.records.get(user, {}).get("mounts") or ()]
        if (volume_id, where) not in mounts:
            try:
                os.makedirs(where, mode=0o755, exist_ok=True)
            except OSError as exc:
                return f"cannot make the mount point {where}: {exc.strerror or exc}"
            with self._lock:  # recorded first: a crash between the two leaves a mount the agent knows of
                self.records[user].setdefault("mounts", []).append([volume_id, where])
                self._save()
        if not os.path.ismount(where):
            result = self._run(["mount", "--bind", source, where])
            if result.returncode != 0:
                return f"cannot mount volume {volume_id} at {where}: {(result.stderr or result.stdout).strip()[:300]}"
        result = self._run(["chown", "-R", "-h", "-P", f"{uid}:{gid}", source])
        if result.returncode != 0:
            return f"cannot hand volume {volume_id} to {user}: {(result.stderr or result.stdout).strip()[:300]}"
        os.chmod(source, 0o700)
        log.info("volume %s: mounted at %s for %s", volume_id, where, user)
        return ""

    def _unmount_volumes(self, user: str) -> str:
        """Unmount the user's volumes, remove the mount points made for them and give their roots back to root."""
        with self._lock:
            mounts = [tuple(m) for m in self.records.get(user, {}).get("mounts") or ()]
        for volume_id, where in mounts:
            if os.path.ismount(where):
                result = self._run(["umount", where])
                if result.returncode != 0 and os.path.ismount(where):
                    return f"cannot unmount volume {volume_id} at {where}: {(result.stderr or result.stdout).strip()}"
            try:
                os.rmdir(where)
            except OSError:
                pass  # gone already, or not empty (then it was not ours to remove)
            source = self.volumes.path(volume_id)
            if source is not None:
                os.chown(source, 0, 0)
                os.chmod(source, 0o755)  # noqa: S103 - a volume root as mkfs makes it: root-owned, 0755
            with self._lock:
                record = self.records.get(user)
                if record is not None:
                    record["mounts"] = [m for m in record.get("mounts") or () if tuple(m) != (volume_id, where)]
                    self._save()
            log.info("volume %s: unmounted from %s", volume_id, where)
        return ""

    # -- records ------------------------------------------------------------------------------------------------

    def _user_of(self, workload_id: int) -> str | None:
        with self._lock:
            for user, record in self.records.items():
                if record["workload"] == workload_id:
                    return user
        return None

    def _record(self, user: str, spec: WorkloadSpec, *, stopped: bool) -> None:
        with self._lock:
            self.records[user] = {
                "mounts": (self.records.get(user) or {}).get("mounts") or [],
                "workload": spec.id,
                "lease": spec.lease,
                "spec": spec.spec_hash,
                "generation": spec.generation,
                "gpus": list(spec.gpus),
                "stopped": stopped,
            }
            self._save()

    def _fail(self, spec: WorkloadSpec, message: str) -> None:
        log.error("workload %s failed: %s", spec.id, message)
        with self._lock:
            self._failures[spec.id] = (spec, message)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeUnavailable(f"the host users record {self.path} is unreadable: {exc}") from None
        return {
            user: record
            for user, record in (data.items() if isinstance(data, dict) else [])
            if USER_RE.match(user) and isinstance(record, dict) and isinstance(record.get("workload"), int)
        }

    def _save(self) -> None:  # with self._lock held
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        atomic_write(self.path, json.dumps(self.records, sort_keys=True, indent=1).encode())

    def _lookup(self, user: str) -> Any:
        try:
            return self.getpwnam(user)
        except KeyError:
            return None

    def _exists(self, user: str) -> bool:
        return self._lookup(user) is not None


def write_authorized_keys(home: str, uid: int, gid: int, keys: tuple[str, ...]) -> None:
    """`home/.ssh/authorized_keys` (0600 in a 0700 directory, owned by the user), without following a link the
    user may have planted: the directories are opened with O_NOFOLLOW and the file is written under a new name, then
    renamed over the old one (so a hard link to another file is replaced, never written through)."""
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.mkdir(".ssh", 0o700, dir_fd=home_fd)
        except FileExistsError:
            pass
        ssh_fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)
        try:
            os.fchown(ssh_fd, uid, gid)
            os.fchmod(ssh_fd, 0o700)
            tmp = f".authorized_keys.suanli-{os.getpid()}-{threading.get_ident()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=ssh_fd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o600)
                os.write(fd, "".join(f"{key}\n" for key in keys).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, "authorized_keys", src_dir_fd=ssh_fd, dst_dir_fd=ssh_fd)
        finally:
            os.close(ssh_fd)
    finally:
        os.close(home_fd)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - fixed programs, a user name checked against USER_RE
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {exc}")
