"""What every workload runtime does, and the shapes the reconciler and the runtimes share.

The platform's desired state (notes/workloads-contract.md) arrives as `Desired` with one `WorkloadSpec` per workload.
A runtime finds what of ours runs on the host (`observe`), and is asked to bring one workload towards running
(`ensure`), to stop one (`stop`) or to stop and remove one with everything it left (`remove`). The decisions (what
to start, recreate, stop or remove, and when) are the reconciler's (`agents.workloads`); a runtime only carries them
out.

Every request returns at once: slow work (an image pull, a stop that waits out the grace period) runs in a
background thread of the runtime, one operation per workload at a time, and a request for a workload whose
operation is still in flight is ignored (the reconciler asks again at its next pass). So one slow pull never holds
up the other workloads or the telemetry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("suanli.agent.workloads")

# The states of the contract's report.
PENDING = "pending"
PULLING = "pulling"
STARTING = "starting"
RUNNING = "running"
EXITED = "exited"
FAILED = "failed"
STOPPING = "stopping"
CLEANED = "cleaned"
STATES = (PENDING, PULLING, STARTING, RUNNING, EXITED, FAILED, STOPPING, CLEANED)

CONTAINER = "container"
HOST = "host"

# Fields whose change means the workload must be created again (a restart keeps none of the old one).
# `volumes` (the mounts, not the volumes' sizes) counts only when the workload has some, so the hash of a workload
# without volumes is the one an agent of before volumes computed (it adopts such containers, never recreates them).
SPEC_FIELDS = ("image", "command", "env", "ports", "gpus", "ssh_keys", "limits", "access", "volumes")


class RuntimeUnavailable(Exception):
    """The runtime cannot work on this host (no docker package, no daemon, not root, ...). One line for a human."""


@dataclass(frozen=True)
class Limits:
    cpus: float | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Limits:
        data = data if isinstance(data, dict) else {}

        def number(key: str, kind: Callable[[Any], Any]) -> Any:
            try:
                value = kind(data.get(key))
            except (TypeError, ValueError):
                return None
            return value if value > 0 else None

        return cls(cpus=number("cpus", float), memory_mb=number("memory_mb", int), disk_gb=number("disk_gb", int))

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory_mb": self.memory_mb, "disk_gb": self.disk_gb}


@dataclass(frozen=True)
class VolumeMount:
    """A volume a workload mounts: the volume's id, where it appears inside the workload, and its size."""

    id: int
    path: str
    size_gb: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> VolumeMount:
        """ValueError unless it has an integer id and an absolute path."""
        if not isinstance(data, dict):
            raise ValueError(f"a volume mount that is not an object: {str(data)[:200]}")
        path = str(data.get("path") or "")
        try:
            volume_id = int(data["id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a volume mount without a valid id: {str(data)[:200]}") from None
        if not path.startswith("/") or "\0" in path or path.rstrip("/") == "":
            raise ValueError(f"volume {volume_id}: the mount path must be absolute and not /: {path[:200]!r}")
        return cls(id=volume_id, path=path.rstrip("/"), size_gb=_int(data.get("size_gb")))


@dataclass(frozen=True)
class VolumeWanted:
    """A volume the platform wants on this server (the desired state's top-level `volumes`)."""

    id: int
    size_gb: int
    owner: str = ""  # the organisation it belongs to, when the platform says (optional)


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of the desired state, as the contract describes it."""

    id: int
    lease: int
    access: str = CONTAINER
    gpus: tuple[str, ...] = ()
    image: str = ""
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    ssh_keys: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    user: str = ""
    desired: str = RUNNING  # RUNNING or "stopped"
    generation: int = 0
    stop_by: float | None = None  # unix seconds
    volumes: tuple[VolumeMount, ...] = ()
    # The organisation the workload runs for, when the platform says (optional): a volume of another organisation
    # (the top-level volume's `owner`) is never mounted into it.
    owner: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkloadSpec:
        """Parse one workload of the desired state; ValueError when it lacks its id or lease (a data-access
        session's container has none: `"lease": null` and its `data_access` id; its lease is 0 here)."""
        try:
            workload_id = int(data["id"])
            lease = 0 if data.get("lease") is None and data.get("data_access") is not None else int(data["lease"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a workload without a valid id and lease: {str(data)[:200]}") from None
        env = data.get("env") if isinstance(data.get("env"), dict) else {}
        volumes = tuple(VolumeMount.from_dict(v) for v in _list(data.get("volumes")))
        if len({v.id for v in volumes}) != len(volumes) or len({v.path for v in volumes}) != len(volumes):
            raise ValueError(f"workload {workload_id} mounts a volume twice or two volumes at one path")
        return cls(
            id=workload_id,
            lease=lease,
            access=HOST if data.get("access") == HOST else CONTAINER,
            gpus=tuple(str(g) for g in _list(data.get("gpus"))),
            image=str(data.get("image") or ""),
            command=tuple(str(c) for c in _list(data.get("command"))),
            env={str(k): str(v) for k, v in env.items()},
            ports=tuple(sorted({int(p) for p in _list(data.get("ports")) if _is_port(p)})),
            ssh_keys=tuple(str(k).strip() for k in _list(data.get("ssh_keys")) if str(k).strip()),
            limits=Limits.from_dict(data.get("limits")),
            user=str(data.get("user") or ""),
            desired="stopped" if data.get("desired") == "stopped" else RUNNING,
            generation=_int(data.get("generation")),
            stop_by=parse_time(data.get("stop_by")),
            volumes=tuple(sorted(volumes, key=lambda v: v.id)),
            owner=str(data.get("owner") or ""),
        )

    @property
    def spec_hash(self) -> str:
        """sha256 of the fields whose change needs the workload created again (`SPEC_FIELDS`)."""
        fields = {
            "image": self.image,
            "command": list(self.command),
            "env": dict(sorted(self.env.items())),
            "ports": list(self.ports),
            "gpus": list(self.gpus),
            "ssh_keys": list(self.ssh_keys),
            "limits": self.limits.as_dict(),
            "access": self.access,
        }
        if self.volumes:
            fields["volumes"] = [[v.id, v.path] for v in self.volumes]
        return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Desired:
    """The platform's desired state for this server."""

    version: int
    server: Any = None
    public_host: str = ""
    port_range: tuple[int, int] | None = None
    workloads: tuple[WorkloadSpec, ...] = ()
    volumes: tuple[VolumeWanted, ...] = ()  # every volume that must exist on this server
    volumes_to_wipe: tuple[int, ...] = ()  # volumes whose data must be destroyed

    @classmethod
    def from_dict(cls, data: Any) -> Desired:
        """Parse the body of GET /api/v1/agent/workloads/; ValueError when it is not the contract's shape."""
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise ValueError("the desired state lacks an integer version")
        port_range = None
        raw = data.get("port_range")
        if isinstance(raw, list | tuple) and len(raw) == 2 and all(_is_port(p) for p in raw) and raw[0] <= raw[1]:
            port_range = (int(raw[0]), int(raw[1]))
        # Data-access sessions (no cards, no lease) are workloads like the others, listed apart by the platform.
        listed = [*_list(data.get("workloads")), *_list(data.get("data_access"))]
        workloads = tuple(WorkloadSpec.from_dict(w) for w in listed if isinstance(w, dict))
        ids = [w.id for w in workloads]
        if len(ids) != len(set(ids)):
            raise ValueError("the desired state lists a workload twice")
        volumes: dict[int, VolumeWanted] = {}
        for item in _list(data.get("volumes")):
            try:
                volume = VolumeWanted(int(item["id"]), int(item["size_gb"]), str(item.get("owner") or ""))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"a volume without an integer id and size_gb: {str(item)[:200]}") from None
            if volume.size_gb <= 0:
                raise ValueError(f"volume {volume.id}: size_gb must be positive")
            volumes[volume.id] = volume
        # A volume both wanted and to wipe (a platform's bug) is kept: data is never destroyed on a doubt.
        wipe = {_int(v) for v in _list(data.get("volumes_to_wipe")) if _int(v) > 0} - set(volumes)
        return cls(
            version=data["version"],
            server=data.get("server"),
            public_host=str(data.get("public_host") or ""),
            port_range=port_range,
            workloads=workloads,
            volumes=tuple(volumes[k] for k in sorted(volumes)),
            volumes_to_wipe=tuple(sorted(wipe)),
        )

    def by_id(self) -> dict[int, WorkloadSpec]:
        return {w.id: w for w in self.workloads}


@dataclass(frozen=True)
class Observed:
    """One workload of ours as the runtime finds it on the host."""

    id: int
    state: str
    lease: int | None = None
    spec_hash: str = ""
    generation: int = 0
    progress: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    message: str = ""
    exit_code: int | None = None
    gpus: tuple[str, ...] = ()
    busy: bool = False  # an operation of the runtime is in flight for it
    volumes: tuple[int, ...] = ()  # the volumes it mounts (none may be wiped while it exists)


@dataclass(frozen=True)
class WorkloadStatus:
    """One entry of a report's `workloads` list."""

    id: int
    state: str
    generation: int = 0
    progress: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    message: str = ""
    exit_code: int | None = None
    gpus: tuple[str, ...] = ()

    def as_report(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "progress": self.progress,
            "ports": dict(self.ports),
            "message": self.message,
            "exit_code": self.exit_code,
            "generation": self.generation,
            "gpus": list(self.gpus),
        }


class Runtime(ABC):
    """Runs workloads on this host. All requests return at once and are safe to repeat (see the module docstring)."""

    name: str = "?"
    # The runtime's volumes (`agents.runtime.volumes.Volumes`); None: this runtime has none (each wanted volume is
    # reported failed, see `Reconciler`).
    volumes: Any = None

    @abstractmethod
    def observe(self) -> dict[int, Observed]:
        """Everything of ours on the host, by workload id: what runs, what is being pulled or stopped, what failed,
        and what was left behind (a scratch directory without its container). Adopted from labels (or records), so a
        restarted agent sees what the one before it started."""

    def claim(self, workload_ids: set[int]) -> None:
        """The workload ids of the desired state in force, told before each `observe`: a runtime that tells its own
        containers from another agent's on the same host (by a label) adopts one of before without that label only
        when its id is among these. Nothing by default."""
        return None

    @abstractmethod
    def ensure(self, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        """Bring `spec` towards running: create it (pulling its image first) when it does not exist, start it when
        it was stopped by `stop`; an existing one of another spec or generation is left alone (the reconciler
        removes it first). A workload whose own process ended stays exited."""

    @abstractmethod
    def stop(self, workload_id: int, grace: float) -> None:
        """Stop it and keep it: SIGTERM, `grace` seconds, then SIGKILL. A creation in flight is cancelled."""

    @abstractmethod
    def remove(self, workload_id: int, grace: float) -> None:
        """Stop it as `stop` does, then remove it with its volumes and its scratch directory."""

    def restart(self, spec: WorkloadSpec, grace: float) -> None:
        """A restart request (a new generation, the same spec). By default the workload is removed and the
        reconciler creates it again; host access ends the user's processes instead and keeps the home."""
        self.remove(spec.id, grace)

    def logs(self, workload_id: int, limit: int) -> bytes | None:
        """The end of the workload's output (stdout and stderr as it printed them), at most `limit` bytes from its
        tail; None when this runtime keeps none (agents/workload_logs.py sends it to the platform)."""
        return None

    def describe(self) -> dict[str, Any]:
        """A few facts for `suanli-agent status` and the log."""
        return {"runtime": self.name}

    def close(self) -> None:  # noqa: B027 - optional for a runtime
        """Let go of connections; the workloads keep running."""


@dataclass
class Operation:
    """One piece of slow work for one workload, run in its own thread."""

    kind: str  # "create", "start", "stop", "remove"
    state: str
    spec: Any = None  # the WorkloadSpec being created or started, if any
    progress: int | None = None
    message: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Operations:
    """At most one operation in flight per workload, each in a daemon thread; the runtimes share this."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[int, Operation] = {}

    def begin(
        self, workload_id: int, kind: str, state: str, work: Callable[[Operation], None], spec: Any = None
    ) -> bool:
        """Run `work(op)` in a thread unless an operation is in flight for the workload; True if it began."""
        with self._lock:
            if workload_id in self._ops:
                return False
            op = Operation(kind, state, spec)
            self._ops[workload_id] = op

        def body() -> None:
            try:
                work(op)
            except Exception:  # a bug in one operation must not end the agent; the reconciler asks again
                log.exception("workload %s: %s failed", workload_id, kind)
            finally:
                with self._lock:
                    self._ops.pop(workload_id, None)

        op.thread = threading.Thread(target=body, name=f"workload-{workload_id}-{kind}", daemon=True)
        op.thread.start()
        return True

    def get(self, workload_id: int) -> Operation | None:
        with self._lock:
            return self._ops.get(workload_id)

    def all(self) -> dict[int, Operation]:
        with self._lock:
            return dict(self._ops)

    def cancel(self, workload_id: int, kinds: tuple[str, ...] = ("create",)) -> bool:
        """Ask an operation of one of `kinds` in flight to give up at its next step; True if there was one."""
        with self._lock:
            op = self._ops.get(workload_id)
        if op is not None and op.kind in kinds:
            op.cancelled.set()
            return True
        return False

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the operations in flight (tests, shutdown)."""
        for op in self.all().values():
            if op.thread is not None:
                op.thread.join(timeout)


def parse_time(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 time with an offset ("2026-12-07T15:00:00+00:00", or "...Z"); None if absent
    or unparseable. A time without an offset is read as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
