"""A runtime with no processes behind it, for `--simulate` demos and the reconciler's tests.

A workload moves pending -> pulling (with progress) -> starting -> running over about two seconds of its clock; a
stop takes `stop_s` (stopping, then exited with 143, as SIGTERM would leave it); a removal takes `stop_s` too and
then it is gone. Host ports are taken from the desired port range as the Docker runtime takes them. With a
`state_file` the simulated workloads outlive the agent process, so a restarted `--simulate` agent adopts them.

Volumes are kept in memory (`agents.runtime.volumes.MemoryVolumes`): ready and wiped at once, nothing on disk.

`fail_images` fails a workload's "pull" with a registry's message; `crash(id, code)` ends a running one as its own
process would. `history` lists what was done, as ("create" | "start" | "stop" | "remove", workload id).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.runtime.base import (
    EXITED,
    FAILED,
    PENDING,
    PULLING,
    RUNNING,
    STARTING,
    STOPPING,
    Observed,
    Runtime,
    WorkloadSpec,
)
from agents.runtime.volumes import MemoryVolumes

log = logging.getLogger("suanli.agent.workloads")

SIGTERM_EXIT = 143


@dataclass
class _Workload:
    id: int
    lease: int
    spec_hash: str
    generation: int
    gpus: list[str]
    ports: dict[str, int]
    image: str
    since: float  # when the current phase began, on the runtime's clock
    phase: str = "create"  # create, stopping, stopped, exited, removing, failed
    held: bool = False  # stopped by `stop`: `ensure` starts it again
    exit_code: int | None = None
    message: str = ""
    starts: int = 1
    volumes: list[int] = field(default_factory=list)


@dataclass
class SimulatedRuntime(Runtime):
    clock: Callable[[], float] = time.time
    state_file: str | None = None
    pending_s: float = 0.3
    pull_s: float = 1.5
    start_s: float = 0.4
    stop_s: float = 0.5
    fail_images: Iterable[str] = ()
    name: str = "simulated"
    history: list[tuple[str, int]] = field(default_factory=list, init=False)
    volumes: MemoryVolumes = field(default_factory=MemoryVolumes, init=False)
    _workloads: dict[int, _Workload] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.fail_images = set(self.fail_images)
        self._load()

    # -- the Runtime interface ----------------------------------------------------------------------------------

    def observe(self) -> dict[int, Observed]:
        with self._lock:
            now = self.clock()
            found: dict[int, Observed] = {}
            changed = False
            for w in list(self._workloads.values()):
                state, progress, message, busy = self._state(w, now)
                if state is None:  # a removal that has finished
                    del self._workloads[w.id]
                    changed = True
                    continue
                found[w.id] = Observed(
                    id=w.id,
                    state=state,
                    lease=w.lease,
                    spec_hash=w.spec_hash,
                    generation=w.generation,
                    progress=progress,
                    ports=dict(w.ports),
                    message=message,
                    exit_code=w.exit_code if state == EXITED else None,
                    gpus=tuple(w.gpus),
                    busy=busy,
                    volumes=tuple(w.volumes),
                )
            if changed:
                self._save()
            return found

    def ensure(self, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        with self._lock:
            now = self.clock()
            w = self._workloads.get(spec.id)
            if w is None:
                ports = self._choose_ports(spec.ports, port_range)
                self._workloads[spec.id] = _Workload(
                    id=spec.id,
                    lease=spec.lease,
                    spec_hash=spec.spec_hash,
                    generation=spec.generation,
                    gpus=list(spec.gpus),
                    ports=ports,
                    image=spec.image,
                    since=now,
                    message="" if len(ports) == len(spec.ports) else "no free host port in the port range",
                    volumes=[v.id for v in spec.volumes],
                )
                self.history.append(("create", spec.id))
                log.info("workload %s (simulated): creating from %s", spec.id, spec.image or "(host access)")
            elif w.phase == "stopped" and w.held:
                w.phase, w.held, w.exit_code, w.starts = "create", False, None, w.starts + 1
                w.since = now - self.pending_s - self.pull_s  # the image is there: straight to starting
                self.history.append(("start", spec.id))
                log.info("workload %s (simulated): starting again", spec.id)
            else:
                return
            self._save()

    def stop(self, workload_id: int, grace: float) -> None:
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None or w.phase in ("stopping", "stopped", "removing"):
                return
            self.history.append(("stop", workload_id))
            if w.phase == "create" and self._state(w, self.clock())[0] in (PENDING, PULLING):
                del self._workloads[workload_id]  # a creation in flight is cancelled: nothing was started
            else:
                w.phase, w.since, w.held = "stopping", self.clock(), True
            self._save()

    def remove(self, workload_id: int, grace: float) -> None:
        with self._lock:
            w = self._workloads.get(workload_id)
            if w is None or w.phase == "removing":
                return
            self.history.append(("remove", workload_id))
            if w.phase in ("stopped", "exited", "failed") or self._state(w, self.clock())[0] in (PENDING, PULLING):
                del self._workloads[workload_id]
            else:
                w.phase, w.since = "removing", self.clock()
            self._save()

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "workloads": len(self._workloads)}

    # -- for demos and tests --------------------------------------------------------------------------------------

    def crash(self, workload_id: int, exit_code: int = 1) -> None:
        """End a workload as its own process would (not a stop of ours: `ensure` leaves it exited)."""
        with self._lock:
            w = self._workloads[workload_id]
            w.phase, w.exit_code, w.held, w.since = "exited", exit_code, False, self.clock()
            self._save()

    def starts(self, workload_id: int) -> int:
        """How many times the workload was started (created or started again)."""
        with self._lock:
            w = self._workloads.get(workload_id)
            return w.starts if w else 0

    # -- internals ------------------------------------------------------------------------------------------------

    def _state(self, w: _Workload, now: float) -> tuple[str | None, int | None, str, bool]:
        """(state, progress, message, busy); state None when a removal has finished."""
        elapsed = now - w.since
        if w.phase == "create":
            if elapsed < self.pending_s:
                return PENDING, None, "", True
            if elapsed < self.pending_s + self.pull_s:
                progress = round(100 * (elapsed - self.pending_s) / self.pull_s) if self.pull_s else 100
                return PULLING, progress, f"pulling {progress}%", True
            if w.image in self.fail_images:
                w.phase, w.message = "failed", f"pull access denied for {w.image}: repository does not exist"
                return FAILED, None, w.message, False
            if elapsed < self.pending_s + self.pull_s + self.start_s:
                return STARTING, None, "", True
            return RUNNING, None, w.message, False
        if w.phase == "failed":
            return FAILED, None, w.message, False
        if w.phase in ("stopping", "removing"):
            if elapsed < self.stop_s:
                return STOPPING, None, "", True
            if w.phase == "removing":
                return None, None, "", False
            w.phase, w.exit_code = "stopped", SIGTERM_EXIT
        if w.phase == "stopped":
            return EXITED, None, "stopped", False
        return EXITED, None, f"exited with code {w.exit_code}", False

    def _choose_ports(self, wanted: tuple[int, ...], port_range: tuple[int, int] | None) -> dict[str, int]:
        if port_range is None:
            return {}
        used = {p for w in self._workloads.values() for p in w.ports.values()}
        free = (p for p in range(port_range[0], port_range[1] + 1) if p not in used)
        ports: dict[str, int] = {}
        for container_port in wanted:
            host_port = next(free, None)
            if host_port is None:
                break
            ports[str(container_port)] = host_port
        return ports

    def _load(self) -> None:
        if not self.state_file:
            return
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                data = json.load(fh)
            self._workloads = {int(w["id"]): _Workload(**w) for w in data}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("simulated workloads in %s unreadable (%s): starting with none", self.state_file, exc)

    def _save(self) -> None:
        if not self.state_file:
            return
        from agents.spool import atomic_write

        os.makedirs(os.path.dirname(os.path.abspath(self.state_file)), exist_ok=True)
        data = [asdict(w) for w in self._workloads.values()]
        atomic_write(self.state_file, json.dumps(data).encode())
