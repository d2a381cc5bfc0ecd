"""Volumes: an organisation's storage on this server that outlives its leases (issue 16).

The desired state lists, at its top level, every volume that must exist here (`volumes: [{"id", "size_gb"}]`) and
every volume whose data must be destroyed (`volumes_to_wipe: [id, ...]`); a workload item names the volumes it mounts
(`volumes: [{"id", "path", "size_gb"}]`). The reconciler hands the first two to the runtime's `Volumes` every pass
(`sync`, which returns at once: slow work runs in a background thread per volume) and puts `report()` in each
report: one entry per volume held or just wiped, `{"id", "state": "ready"|"wiped"|"failed", "used_gb", "message"}`.
A volume being made or wiped is not reported until it is done (the platform keeps it "creating" or "wiping").

Three kinds:
- `VolumeStore` (the Docker runtime): each volume is a sparse image file of its size, `<dir>/<id>.img`, formatted
  ext4 (`mkfs.ext4 -q -F -m 0`, nothing reserved for root: the customer gets the whole size) and loop-mounted
  (`mount -o loop,nodev,nosuid`) at `<dir>/<id>/`, which the container bind-mounts. A write past its size fails with
  ENOSPC inside the volume and never fills the host's disk beyond the size. The images outlive the agent: a new store
  mounts every image it finds. Making one goes through `<id>.img.new` (renamed when formatted), so a crash never
  leaves a half-made image; a wipe unmounts it, renames the image `<id>.img.wipe`, truncates it to 0 and unlinks it (a
  wipe cut short is finished by the next store). A volume in use (a workload of ours that mounts it still exists) is
  wiped only once that workload is gone. Images found that the desired state neither wants nor wipes are kept
  (reported, never destroyed on a guess).
- `MemoryVolumes` (the simulated runtime): ready and wiped at once, nothing on disk, used_gb 0.
- `UnsupportedVolumes` (a runtime without volumes): every wanted volume is "failed" with the reason; a wipe is
  "wiped" at once (nothing was ever made).

Sizes in the protocol are whole GB (2**30 bytes), used_gb too; `VolumeStore(unit=...)` takes another size unit for
tests only (a "GB" of 1 MiB keeps a volume's ENOSPC test fast).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agents.runtime.base import Operation, Operations, VolumeWanted

log = logging.getLogger("suanli.agent.volumes")

GB = 2**30
READY = "ready"
WIPED = "wiped"
FAILED = "failed"
CREATING = "creating"  # in the status only: being made (or about to be), not reported
WIPING = "wiping"  # in the status only: being wiped, or waiting for its workload to be removed
REPORTED = (READY, WIPED, FAILED)
WIPED_REPORTS = 3  # a wiped volume is reported this many times after its wipe, then forgotten
MAX_REPORTED = 1000  # a report never carries more volumes than this
RETRY_S = 60.0  # a volume that failed to be made or wiped is tried again after this long
COMMAND_TIMEOUT_S = 300
IMAGE_RE = re.compile(r"^([0-9]{1,12})\.img$")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


@dataclass(frozen=True)
class VolumeStatus:
    id: int
    state: str
    used_bytes: int = 0
    size_bytes: int = 0
    message: str = ""

    def as_report(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "used_gb": round(self.used_bytes / GB, 3), "message": self.message}


class Volumes(ABC):
    """What a runtime offers the reconciler for volumes. `sync` is safe to repeat: the same desired volumes twice
    change nothing."""

    name = "?"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._wiped: dict[int, int] = {}  # volume id -> reports left that say "wiped"

    @abstractmethod
    def sync(self, wanted: Iterable[VolumeWanted], wipe: Iterable[int], busy: Iterable[int] = ()) -> None:
        """Make each wanted volume that is missing and wipe each volume of `wipe` that no workload in `busy` (the
        volume ids that workloads of ours still mount) holds. Returns at once."""

    @abstractmethod
    def statuses(self) -> dict[int, VolumeStatus]:
        """Every volume known: held, being made or wiped, or just wiped."""

    def path(self, volume_id: int) -> str | None:
        """The host directory a container bind-mounts for the volume, when it is ready; None otherwise."""
        return None

    def report(self) -> list[dict[str, Any]]:
        """The report's `volumes` (bounded); counts down the reports left for each wiped volume."""
        entries = [s.as_report() for s in self.statuses().values() if s.state in REPORTED][:MAX_REPORTED]
        with self._lock:
            for entry in entries:
                if entry["state"] == WIPED and entry["id"] in self._wiped:
                    left = self._wiped[entry["id"]] - 1
                    if left <= 0:
                        del self._wiped[entry["id"]]
                    else:
                        self._wiped[entry["id"]] = left
        return entries

    def describe(self) -> dict[str, Any]:
        return {"volumes": self.name}

    def wait(self, timeout: float | None = None) -> None:  # noqa: B027 - only the store has background work
        """Wait for the work in flight (tests, shutdown)."""

    def _wiped_now(self, volume_id: int) -> None:
        with self._lock:
            self._wiped[volume_id] = WIPED_REPORTS


class MemoryVolumes(Volumes):
    """Volumes of the simulated runtime: nothing on disk, ready and wiped at once."""

    name = "simulated"

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[int, int] = {}  # id -> size_gb
        self._wipe: set[int] = set()

    def sync(self, wanted: Iterable[VolumeWanted], wipe: Iterable[int], busy: Iterable[int] = ()) -> None:
        busy = set(busy)
        with self._lock:
            wanted = {v.id: v for v in wanted}
            for volume in wanted.values():
                if volume.id not in self._held:
                    log.info("volume %s (simulated): %s GB ready", volume.id, volume.size_gb)
                    self._wiped.pop(volume.id, None)
                self._held[volume.id] = volume.size_gb
            self._wipe = set(wipe) - set(wanted)
            for volume_id in self._wipe - busy:
                if self._held.pop(volume_id, None) is not None:
                    log.info("volume %s (simulated): wiped", volume_id)
                    self._wiped_now(volume_id)

    def statuses(self) -> dict[int, VolumeStatus]:
        with self._lock:
            found = {i: VolumeStatus(i, READY, 0, size * GB) for i, size in self._held.items()}
            for volume_id in self._wipe & set(self._held):
                found[volume_id] = VolumeStatus(volume_id, WIPING, message="waiting for its workload to be removed")
            for volume_id in (set(self._wiped) | self._wipe) - set(self._held):
                found[volume_id] = VolumeStatus(volume_id, WIPED)
            return found


class UnsupportedVolumes(Volumes):
    """A runtime without volumes: each wanted volume fails with `reason`; a wipe has nothing to destroy."""

    name = "unsupported"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason
        self._wanted: set[int] = set()
        self._wipe: set[int] = set()

    def sync(self, wanted: Iterable[VolumeWanted], wipe: Iterable[int], busy: Iterable[int] = ()) -> None:
        with self._lock:
            self._wanted = {v.id for v in wanted}
            self._wipe = set(wipe)

    def statuses(self) -> dict[int, VolumeStatus]:
        with self._lock:
            found = {i: VolumeStatus(i, FAILED, message=self.reason) for i in self._wanted}
            for volume_id in self._wipe:
                found[volume_id] = VolumeStatus(volume_id, WIPED)
            return found


@dataclass(frozen=True)
class _Failure:
    message: str
    at: float
    kind: str  # "create", "mount" or "wipe"


class VolumeStore(Volumes):
    """Loop-mounted ext4 images under `directory` (see the module docstring). Needs root, mount and mkfs.ext4 (or
    mke2fs) from e2fsprogs; without them each volume is "failed" with what is missing, and the agent goes on."""

    name = "loop"

    def __init__(
        self,
        directory: str,
        *,
        unit: int = GB,
        root: bool | None = None,
        mkfs: str | None = None,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        run: Callable[..., subprocess.CompletedProcess[str]] | None = None,
    ) -> None:
        super().__init__()
        self.directory = os.path.abspath(directory)
        self.unit = int(unit)
        self.root = (os.geteuid() == 0) if root is None else root
        self.mkfs = mkfs if mkfs is not None else _find_mkfs()
        self.retry_s = retry_s
        self.clock = clock
        self._run = run or _run
        self.ops = Operations()
        self._failures: dict[int, _Failure] = {}
        self._wanted: dict[int, VolumeWanted] = {}
        self._wipe: set[int] = set()
        self._busy: set[int] = set()
        self._kept_logged: set[int] = set()
        self.error = ""  # why the store cannot work at all, if it cannot
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            self.error = f"cannot use the volumes directory {self.directory}: {exc.strerror or exc}"
            log.error("%s", self.error)
            return
        self._finish_interrupted()
        for volume_id in self._images():
            self._mount(volume_id)
        if self.root and _own_mount_namespace():
            log.warning(
                "the agent runs in a mount namespace of its own (systemd sandboxing?): Docker will not see the "
                "volumes it mounts under %s; see agents/README.md, Volumes",
                self.directory,
            )

    # -- paths ------------------------------------------------------------------------------------------------

    def image(self, volume_id: int) -> str:
        return os.path.join(self.directory, f"{int(volume_id)}.img")

    def mount_dir(self, volume_id: int) -> str:
        return os.path.join(self.directory, str(int(volume_id)))

    def path(self, volume_id: int) -> str | None:
        with self._lock:
            if volume_id in self._wipe or self.ops.get(volume_id) is not None:
                return None
        directory = self.mount_dir(volume_id)
        return directory if os.path.ismount(directory) else None

    def _images(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(int(m.group(1)) for m in map(IMAGE_RE.match, names) if m)

    def describe(self) -> dict[str, Any]:
        return {
            "volumes": self.name,
            "volumes_dir": self.directory,
            "mkfs": self.mkfs or "not found (install e2fsprogs)",
            "volumes_error": self.error or self._blocker(),
        }

    # -- the reconciler's requests ----------------------------------------------------------------------------

    def sync(self, wanted: Iterable[VolumeWanted], wipe: Iterable[int], busy: Iterable[int] = ()) -> None:
        wanted = {v.id: v for v in wanted}
        wipe = set(wipe) - set(wanted)
        with self._lock:
            self._wanted, self._wipe, self._busy = wanted, wipe, set(busy)
        if self.error:
            return
        on_disk = set(self._images())
        for volume in wanted.values():
            if self.ops.get(volume.id) is not None or not self._due(volume.id):
                continue
            if volume.id in on_disk:
                if not os.path.ismount(self.mount_dir(volume.id)):
                    self._mount(volume.id)
            else:
                self._begin(volume.id, "create", CREATING, lambda op, v=volume: self._create(op, v))
        for volume_id in sorted(wipe):
            if volume_id in self._busy or self.ops.get(volume_id) is not None or not self._due(volume_id):
                continue
            if volume_id in on_disk or os.path.lexists(self.mount_dir(volume_id)):
                self._begin(volume_id, "wipe", WIPING, lambda op, i=volume_id: self._destroy(op, i))
        for volume_id in on_disk - set(wanted) - wipe - self._kept_logged:
            log.warning("volume %s: on this host but neither wanted nor to wipe: kept as it is", volume_id)
            self._kept_logged.add(volume_id)

    def statuses(self) -> dict[int, VolumeStatus]:
        with self._lock:
            wanted, wipe, busy = dict(self._wanted), set(self._wipe), set(self._busy)
            failures = dict(self._failures)
            wiped = set(self._wiped)
        ops = self.ops.all()
        on_disk = set(self._images())
        found: dict[int, VolumeStatus] = {}
        for volume_id in sorted(set(wanted) | on_disk | wipe | wiped):
            op = ops.get(volume_id)
            failure = failures.get(volume_id)
            size = self._size(volume_id)
            if op is not None:
                found[volume_id] = VolumeStatus(volume_id, op.state, 0, size, op.message)
            elif volume_id in wipe and (volume_id in on_disk or os.path.lexists(self.mount_dir(volume_id))):
                if failure is not None and failure.kind == "wipe":
                    found[volume_id] = VolumeStatus(volume_id, FAILED, 0, size, failure.message)
                else:
                    why = "waiting for its workload to be removed" if volume_id in busy else "about to be wiped"
                    found[volume_id] = VolumeStatus(volume_id, WIPING, 0, size, why)
            elif volume_id in wipe or (volume_id in wiped and volume_id not in on_disk):
                found[volume_id] = VolumeStatus(volume_id, WIPED)
            elif volume_id in on_disk and os.path.ismount(self.mount_dir(volume_id)):
                found[volume_id] = VolumeStatus(volume_id, READY, self._used(volume_id), size)
            elif failure is not None:
                found[volume_id] = VolumeStatus(volume_id, FAILED, 0, size, failure.message)
            elif self.error or self._blocker():
                found[volume_id] = VolumeStatus(volume_id, FAILED, 0, size, self.error or self._blocker())
            elif volume_id in on_disk:
                found[volume_id] = VolumeStatus(volume_id, FAILED, 0, size, "its image is not mounted")
            else:
                found[volume_id] = VolumeStatus(volume_id, CREATING, 0, 0, "about to be made")
        return found

    def wait(self, timeout: float | None = None) -> None:
        self.ops.wait(timeout)

    # -- internals ----------------------------------------------------------------------------------------------

    def _blocker(self) -> str:
        """Why no volume can be made or mounted here, if something is missing."""
        if not self.root:
            return "volumes need the agent to run as root (it loop-mounts them)"
        if not self.mkfs:
            return "mkfs.ext4 (or mke2fs) is not installed: install e2fsprogs"
        return ""

    def _due(self, volume_id: int) -> bool:
        """No failure recorded, or the last one is older than retry_s (then it is forgotten and tried again)."""
        with self._lock:
            failure = self._failures.get(volume_id)
            if failure is None:
                return True
            if self.clock() - failure.at < self.retry_s:
                return False
            del self._failures[volume_id]
            return True

    def _fail(self, volume_id: int, kind: str, message: str) -> None:
        log.error("volume %s: %s", volume_id, message)
        with self._lock:
            self._failures[volume_id] = _Failure(message[:500], self.clock(), kind)

    def _begin(self, volume_id: int, kind: str, state: str, work: Callable[[Operation], None]) -> None:
        if self.ops.begin(volume_id, kind, state, work):
            log.info("volume %s: %s", volume_id, kind)

    def _size(self, volume_id: int) -> int:
        try:
            return os.stat(self.image(volume_id)).st_size
        except OSError:
            return 0

    def _used(self, volume_id: int) -> int:
        try:
            st = os.statvfs(self.mount_dir(volume_id))
        except OSError:
            return 0
        return max(0, (st.f_blocks - st.f_bfree) * st.f_frsize)

    def _command(self, argv: list[str]) -> str:
        """Run a command; "" when it succeeded, else what it said (or why it could not run)."""
        try:
            done = self._run(argv)
        except FileNotFoundError:
            return f"{argv[0]} is not installed"
        except subprocess.TimeoutExpired:
            return f"{os.path.basename(argv[0])} did not finish in {COMMAND_TIMEOUT_S} s"
        except OSError as exc:
            return f"cannot run {argv[0]}: {exc}"
        if done.returncode == 0:
            return ""
        said = " ".join((done.stderr or done.stdout or "").split())
        return f"{os.path.basename(argv[0])} exited with {done.returncode}: {said[:300]}"

    def _mount(self, volume_id: int) -> bool:
        """Mount the volume's image at its directory (made if missing); True if mounted."""
        directory = self.mount_dir(volume_id)
        if os.path.ismount(directory):
            return True
        blocker = self._blocker()
        if blocker:
            self._fail(volume_id, "mount", blocker)
            return False
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            self._fail(volume_id, "mount", f"cannot make its mount point {directory}: {exc.strerror or exc}")
            return False
        error = self._command(["mount", "-o", "loop,nodev,nosuid", self.image(volume_id), directory])
        if error:
            self._fail(volume_id, "mount", f"cannot mount its image: {error}")
            return False
        with self._lock:
            self._failures.pop(volume_id, None)
        log.info("volume %s: mounted at %s", volume_id, directory)
        return True

    def _create(self, op: Operation, volume: VolumeWanted) -> None:
        blocker = self._blocker()
        if blocker:
            self._fail(volume.id, "create", blocker)
            return
        new = self.image(volume.id) + ".new"
        size = volume.size_gb * self.unit
        try:
            with open(new, "wb") as fh:
                fh.truncate(size)  # sparse: the host's disk is used only as the volume fills
            op.message = "formatting"
            error = self._command([self.mkfs, "-q", "-F", "-m", "0", "-t", "ext4", new])
            if error:
                raise _Failed(f"cannot format its image: {error}")
            os.rename(new, self.image(volume.id))
        except _Failed as exc:
            self._fail(volume.id, "create", str(exc))
            return
        except OSError as exc:
            self._fail(volume.id, "create", f"cannot make its image {new}: {exc.strerror or exc}")
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(new)
        op.message = "mounting"
        with self._lock:
            self._wiped.pop(volume.id, None)  # the same id made again after a wipe: a new, empty volume
        if self._mount(volume.id):
            log.info("volume %s: made, %s GB", volume.id, volume.size_gb)

    def _destroy(self, op: Operation, volume_id: int) -> None:
        """Unmount, truncate the image to 0 and unlink it, remove the mount point; then report it wiped."""
        directory = self.mount_dir(volume_id)
        if os.path.ismount(directory):
            error = self._command(["umount", directory])
            if error and os.path.ismount(directory):
                self._fail(volume_id, "wipe", f"cannot unmount it: {error}")
                return
        image = self.image(volume_id)
        try:
            if os.path.exists(image):
                os.rename(image, image + ".wipe")
            _truncate_unlink(image + ".wipe")
            if os.path.lexists(directory) and not os.path.ismount(directory):
                if os.path.isdir(directory) and not os.path.islink(directory):
                    shutil.rmtree(directory)
                else:
                    os.unlink(directory)
        except OSError as exc:
            self._fail(volume_id, "wipe", f"cannot destroy its image: {exc.strerror or exc}")
            return
        with self._lock:
            self._failures.pop(volume_id, None)
        self._wiped_now(volume_id)
        log.info("volume %s: wiped (unmounted, image truncated and removed)", volume_id)

    def _finish_interrupted(self) -> None:
        """A creation cut short leaves `<id>.img.new` (removed); a wipe cut short, `<id>.img.wipe` (finished)."""
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            try:
                if re.match(r"^[0-9]{1,12}\.img\.new$", name):
                    os.unlink(path)
                elif re.match(r"^[0-9]{1,12}\.img\.wipe$", name):
                    _truncate_unlink(path)
                    self._wiped_now(int(name.split(".")[0]))
                    log.info("volume %s: an interrupted wipe finished", name.split(".")[0])
            except OSError as exc:
                log.error("cannot clean %s up: %s", path, exc)


class _Failed(Exception):
    pass


def _truncate_unlink(path: str) -> None:
    """Free the data's blocks first (truncate to 0), then remove the name; nothing if it is already gone."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)


def _own_mount_namespace() -> bool:
    """True when this process's mount namespace is not PID 1's (False when that cannot be read)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


def _find_mkfs() -> str:
    return shutil.which("mkfs.ext4", path=SBIN_PATH) or shutil.which("mke2fs", path=SBIN_PATH) or ""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=SBIN_PATH, LC_ALL="C")
    return subprocess.run(  # noqa: S603 - fixed programs, our own paths
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=env, check=False
    )
