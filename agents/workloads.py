"""The reconciler: make what runs on this host match the workloads the platform wants here, like a kubelet.

Every `poll` seconds (3 by default) in its own thread, `Reconciler.tick()`:
1. GETs the desired state (`Client.get_workloads`, signed), when due. A desired state that arrives is written to
   `<state_dir>/workloads.json` before it is acted on, so a restarted agent still knows it (its `stop_by` deadlines
   above all) while the platform is unreachable. When the GET fails, the last desired state stays in force and the
   next GET waits an exponential back-off (at least `poll`, at most 60 s, at least Retry-After).
2. Observes what of ours is on the host (`Runtime.observe`) and compares:
   - a workload of ours that the desired state does not list, or whose `stop_by` has passed (on the host clock,
     reachable platform or not): stopped (SIGTERM, `grace`, SIGKILL) and removed with its volumes and scratch;
   - a listed workload found with another spec (`spec_hash`): removed, then created again; with another generation
     (a restart request increments it): restarted (`Runtime.restart`: a container is created again, a host-access
     user's processes are ended and its home kept);
   - a listed workload with `desired: running` that is missing, or stopped by us: created or started
     (`Runtime.ensure`); one whose own process ended stays `exited` until a restart request;
   - a listed workload with `desired: stopped`: stopped, kept.
   Until a desired state is known (a fresh agent that has never reached the platform) nothing is started or stopped:
   a running workload is never killed because the platform is unreachable.
   Volumes (issue 16) go first: the runtime's `Volumes` is asked to make each volume of the desired state's
   `volumes` that is missing and to wipe each of `volumes_to_wipe` that no workload of ours still mounts (both in
   the background). A workload that mounts a volume not ready yet is not started: it stays `pending` with a message
   that says which volume it waits for (and why, when the volume failed). Then the volume moves of the desired
   state (`volume_transfers_out` and `_in`) go to `Transfers.sync` (agents/transfers.py), which copies them through
   the platform in threads of their own.
3. Publishes a snapshot for the reports (`report_fields`): one entry per workload, as the contract says, and
   `workloads_version`, the highest desired version whose removals are all done (nothing of a workload absent from
   it remains on the host). A workload removed after it left the desired state is reported `cleaned` in the next
   `CLEANED_REPORTS` reports. The reports also carry `volumes`, one entry per volume held or just wiped.
4. Every `logs_every` seconds (30), sends the tails of the workloads' output that changed (agents/workload_logs.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.client import FETCHED, REFUSED, Backoff
from agents.runtime.base import (
    CLEANED,
    EXITED,
    FAILED,
    PENDING,
    PULLING,
    RUNNING,
    STARTING,
    Desired,
    Observed,
    Runtime,
    WorkloadSpec,
    WorkloadStatus,
)
from agents.runtime.volumes import READY, UnsupportedVolumes, Volumes, VolumeStatus
from agents.spool import atomic_write
from agents.transfers import Transfers
from agents.workload_logs import LogShipper

log = logging.getLogger("suanli.agent.workloads")

STATE_FILE = "workloads.json"
CLEANED_REPORTS = 3
REFUSED_RETRY_S = 60.0
ACTIVE = (PENDING, PULLING, STARTING, RUNNING)


@dataclass(frozen=True)
class Snapshot:
    """What the reconciler last saw: the report's `workloads_version` (None until a desired state is known and its
    removals are done) and one status per workload."""

    version: int | None
    workloads: tuple[WorkloadStatus, ...]
    desired_version: int | None = None
    fetched_at: float | None = None  # wall clock of the last successful GET
    error: str = ""  # why the last GET or observation failed, if it did


class Reconciler:
    def __init__(
        self,
        client: Any,
        runtime: Runtime,
        state_dir: str,
        *,
        poll: float = 3.0,
        grace: float = 10.0,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], Any] | None = None,
        backoff: Backoff | None = None,
        logs_every: float = 30.0,
    ):
        if poll <= 0:
            raise ValueError("poll must be positive")
        self.client = client
        self.runtime = runtime
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.poll = float(poll)
        self.grace = float(grace)
        self.wall = wall
        self.clock = clock
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.desired: Desired | None = None
        self._raw: dict[str, Any] | None = None
        self.done_version: int | None = None
        self.fetched_at: float | None = None
        self.cleaned: dict[int, tuple[int, int, tuple[str, ...]]] = {}  # id -> (reports left, generation, gpus)
        self._observed: dict[int, Observed] = {}
        self._statuses: tuple[WorkloadStatus, ...] = ()
        self._error = ""
        self._saved = b""
        self._asked: dict[int, str] = {}  # the last action asked of the runtime per workload, to log each once
        self.volumes: Volumes = runtime.volumes or UnsupportedVolumes(
            f"volumes are not supported by the {runtime.name} runtime"
        )
        self._volumes: dict[int, VolumeStatus] = {}
        # Volume moves (agents/transfers.py): a worker per move listed, copying through the platform.
        self.transfers = Transfers(client, self.volumes) if hasattr(client, "signed") else None
        # The tails of the workloads' output, for their customers (agents/workload_logs.py), every `logs_every` s.
        self.logs = (
            LogShipper(client, runtime, every=logs_every, clock=clock, wall=wall) if hasattr(client, "signed") else None
        )
        self._waiting: dict[int, str] = {}  # workload id -> why it is not started yet (a volume not ready)
        self._refused: dict[int, str] = {}  # workload id -> why it is never started (another organisation's volume)
        self.attempt = 0
        self.next_fetch = clock()
        self._load()

    # -- thread -----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="workloads", daemon=True)
        self._thread.start()

    def stop(self, *_: Any) -> None:
        """End the loop after the pass in flight; the workloads keep running."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, duration: float | None = None) -> None:
        end = None if duration is None else self.clock() + duration
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad pass must not end workload management
                log.exception("workload reconciliation failed; trying again in %s s", self.poll)
            if end is not None and self.clock() >= end:
                break
            self._wait(self.poll if end is None else max(0.0, min(self.poll, end - self.clock())))

    # -- one pass ---------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        if self.clock() >= self.next_fetch:
            self.fetch()
        self.reconcile()
        self._save()
        if self.logs is not None and self.logs.due():
            with self._lock:
                ids = list(self._observed)
            try:
                self.logs.ship(ids)
            except Exception:  # the output is a convenience; the workloads go on
                log.exception("cannot send the workloads' output")

    def fetch(self) -> bool:
        """GET the desired state once; True if a new one is in force."""
        outcome = self.client.get_workloads()
        if outcome.kind == FETCHED:
            try:
                desired = Desired.from_dict(outcome.payload)
            except ValueError as exc:
                self._fetch_failed(f"a malformed desired state: {exc}", None)
                return False
            if self.attempt:
                log.info("the desired workloads are reachable again after %s failed attempt(s)", self.attempt)
            self.attempt = 0
            self.next_fetch = self.clock() + self.poll
            with self._lock:
                if self.desired is None or self._raw != outcome.payload:
                    log.info("desired workloads: version %s, %s workload(s)", desired.version, len(desired.workloads))
                self.desired, self._raw, self.fetched_at, self._error = desired, outcome.payload, self.wall(), ""
            self._save()  # persisted before it is acted on
            return True
        if outcome.kind == REFUSED:
            self._fetch_failed(f"HTTP {outcome.status}: {outcome.detail[:200]}", REFUSED_RETRY_S)
        else:
            self._fetch_failed(
                f"{f'HTTP {outcome.status}: ' if outcome.status else ''}{outcome.detail[:200]}", outcome.retry_after
            )
        return False

    def _fetch_failed(self, reason: str, retry_after: float | None) -> None:
        delay = max(self.poll, self.backoff.delay(self.attempt, retry_after))
        level = logging.WARNING if self.attempt < 3 else logging.DEBUG
        log.log(
            level,
            "cannot get the desired workloads (%s); %s; next try in %.0f s",
            reason,
            "keeping the last desired state" if self.desired is not None else "changing nothing until it arrives",
            delay,
        )
        self.attempt += 1
        self.next_fetch = self.clock() + delay
        with self._lock:
            self._error = reason

    def reconcile(self) -> None:
        """Compare the desired state with what is on the host and ask the runtime for the difference."""
        try:
            if self.desired is not None:
                self.runtime.claim({spec.id for spec in self.desired.workloads})
            observed = self.runtime.observe()
        except Exception as exc:  # the daemon is down or restarting: nothing is decided on a blind pass
            log.warning("cannot observe the workloads (%s: %s)", type(exc).__name__, exc)
            with self._lock:
                self._error = f"cannot observe the workloads: {exc}"
            return
        desired = self.desired
        now = self.wall()
        wanted: dict[int, WorkloadSpec] = {}
        expired: set[int] = set()
        if desired is not None:
            self._sync_volumes(desired, observed)
            if self.transfers is not None:
                self.transfers.sync(self._raw)
            for spec in desired.workloads:
                if spec.stop_by is not None and now >= spec.stop_by:
                    expired.add(spec.id)
                else:
                    wanted[spec.id] = spec
            for workload_id in observed:
                if workload_id not in wanted:
                    why = "its stop_by has passed" if workload_id in expired else "it is no longer wanted"
                    self._ask(workload_id, "remove", why)
                    self.runtime.remove(workload_id, self.grace)
            for spec in wanted.values():
                self._converge(spec, observed.get(spec.id), desired.port_range)
        self._publish(desired, observed, wanted, expired)

    def _converge(self, spec: WorkloadSpec, seen: Observed | None, port_range: tuple[int, int] | None) -> None:
        if seen is not None and seen.spec_hash != spec.spec_hash:
            self._ask(spec.id, "recreate", "its spec changed")
            self.runtime.remove(spec.id, self.grace)
        elif seen is not None and seen.generation != spec.generation:
            if not seen.busy:
                self._ask(spec.id, "restart", f"generation {seen.generation} -> {spec.generation}")
                self.runtime.restart(spec, self.grace)
        elif spec.desired == RUNNING:
            if seen is None or not (seen.busy or seen.state == RUNNING):
                refused = self._volumes_refused(spec)
                if refused:
                    self._ask(spec.id, "refuse", refused)
                    self._refused[spec.id] = refused
                    return
                waiting = self._volumes_missing(spec)
                if waiting:
                    self._ask(spec.id, "wait", waiting)
                    self._waiting[spec.id] = waiting
                    return
                self._ask(spec.id, "ensure", "it is wanted running")
                self.runtime.ensure(spec, port_range)
        elif seen is not None and seen.state in ACTIVE:
            self._ask(spec.id, "stop", "it is wanted stopped")
            self.runtime.stop(spec.id, self.grace)

    def _sync_volumes(self, desired: Desired, observed: dict[int, Observed]) -> None:
        """Ask the runtime's volumes for the desired ones (none wiped while a workload of ours mounts it)."""
        busy = {volume_id for seen in observed.values() for volume_id in seen.volumes}
        try:
            self.volumes.sync(desired.volumes, desired.volumes_to_wipe, busy)
            statuses = self.volumes.statuses()
        except Exception:  # a bug on the volumes' side must not stop the workloads
            log.exception("cannot bring the volumes to the desired state")
            return
        self._waiting, self._refused = {}, {}
        with self._lock:
            self._volumes = statuses

    def _volumes_refused(self, spec: WorkloadSpec) -> str:
        """Why `spec` may never mount its volumes ("" if it may): one belongs to another organisation, when the
        desired state names the owners of both."""
        owners = {v.id: v.owner for v in self.desired.volumes} if self.desired is not None else {}
        others = [str(m.id) for m in spec.volumes if spec.owner and owners.get(m.id) not in ("", None, spec.owner)]
        if others:
            return f"refused: volume {', '.join(others)} belongs to another organisation"
        return ""

    def _volumes_missing(self, spec: WorkloadSpec) -> str:
        """Why `spec` cannot start yet ("" if every volume it mounts is ready)."""
        waits = []
        for mount in spec.volumes:
            status = self._volumes.get(mount.id)
            if status is None:
                waits.append(f"volume {mount.id} (not in this server's desired volumes)")
            elif status.state != READY:
                why = f": {status.message}" if status.message else ""
                waits.append(f"volume {mount.id} ({status.state}{why})")
        return f"waiting for {', '.join(waits)}" if waits else ""

    def _ask(self, workload_id: int, action: str, why: str) -> None:
        if self._asked.get(workload_id) != action:
            log.info("workload %s: %s (%s)", workload_id, action, why)
            self._asked[workload_id] = action

    def _publish(
        self, desired: Desired | None, observed: dict[int, Observed], wanted: dict[int, WorkloadSpec], expired: set[int]
    ) -> None:
        listed = desired.by_id() if desired is not None else {}
        with self._lock:
            # A workload of ours that left the host after it left the desired state (or passed its stop_by).
            for workload_id, before in self._observed.items():
                if workload_id not in observed and workload_id not in wanted:
                    self.cleaned[workload_id] = (CLEANED_REPORTS, before.generation, before.gpus)
                    log.info("workload %s: cleaned (container or user, volumes and scratch removed)", workload_id)
            for workload_id in wanted:
                self.cleaned.pop(workload_id, None)
            for workload_id in [w for w in self._asked if w not in observed and w not in listed]:
                del self._asked[workload_id]
            statuses: dict[int, WorkloadStatus] = {}
            for spec in listed.values():
                seen = observed.get(spec.id)
                if seen is not None:
                    statuses[spec.id] = _status(seen)
                elif spec.id in expired:
                    statuses[spec.id] = WorkloadStatus(spec.id, CLEANED, spec.generation, gpus=spec.gpus)
                elif spec.id in self._refused:
                    statuses[spec.id] = WorkloadStatus(
                        spec.id, FAILED, spec.generation, message=self._refused[spec.id], gpus=spec.gpus
                    )
                elif spec.desired == RUNNING:
                    statuses[spec.id] = WorkloadStatus(
                        spec.id, PENDING, spec.generation, message=self._waiting.get(spec.id, ""), gpus=spec.gpus
                    )
                else:
                    statuses[spec.id] = WorkloadStatus(
                        spec.id, EXITED, spec.generation, message="stopped", gpus=spec.gpus
                    )
            for workload_id, seen in observed.items():
                statuses.setdefault(workload_id, _status(seen))
            for workload_id, (_, generation, gpus) in self.cleaned.items():
                statuses.setdefault(workload_id, WorkloadStatus(workload_id, CLEANED, generation, gpus=gpus))
            if desired is not None and all(workload_id in listed for workload_id in observed):
                self.done_version = desired.version
            self._observed = observed
            self._statuses = tuple(statuses[k] for k in sorted(statuses))

    # -- what the reports carry -------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The last pass's view, safe to call from any thread; changes nothing."""
        with self._lock:
            return Snapshot(
                version=self.done_version,
                workloads=self._statuses,
                desired_version=self.desired.version if self.desired is not None else None,
                fetched_at=self.fetched_at,
                error=self._error,
            )

    def report_fields(self) -> dict[str, Any]:
        """`workloads` and (once known) `workloads_version` for one report; counts the `cleaned` entries reported."""
        with self._lock:
            fields: dict[str, Any] = {"workloads": [s.as_report() for s in self._statuses]}
        try:
            volumes = self.volumes.report()
            if volumes:  # a server without volumes sends none
                fields["volumes"] = volumes
        except Exception:  # the workloads still go out
            log.exception("cannot add the volumes to the report")
        with self._lock:
            if self.done_version is not None:
                fields["workloads_version"] = self.done_version
            for status in self._statuses:
                if status.state == CLEANED and status.id in self.cleaned:
                    left, generation, gpus = self.cleaned[status.id]
                    if left <= 1:
                        del self.cleaned[status.id]
                    else:
                        self.cleaned[status.id] = (left - 1, generation, gpus)
            self._statuses = tuple(
                s for s in self._statuses if s.state != CLEANED or s.id in self.cleaned or self._listed(s.id)
            )
            return fields

    def _listed(self, workload_id: int) -> bool:
        return self.desired is not None and any(w.id == workload_id for w in self.desired.workloads)

    # -- persistence ------------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("the saved desired workloads %s are unreadable (%s): waiting for the platform's", self.path, exc)
            return
        if not isinstance(data, dict):
            return
        raw = data.get("desired")
        if raw is not None:
            try:
                self.desired, self._raw = Desired.from_dict(raw), raw
            except ValueError as exc:
                log.error("the saved desired workloads in %s are malformed (%s): ignored", self.path, exc)
        if isinstance(data.get("done_version"), int):
            self.done_version = data["done_version"]
        if isinstance(data.get("fetched_at"), int | float):
            self.fetched_at = float(data["fetched_at"])
        for key, value in (data.get("cleaned") or {}).items():
            try:
                self.cleaned[int(key)] = (int(value[0]), int(value[1]), tuple(str(g) for g in value[2]))
            except (TypeError, ValueError, IndexError):
                continue
        if self.desired is not None:
            log.info(
                "saved desired workloads: version %s, %s workload(s), fetched %s",
                self.desired.version,
                len(self.desired.workloads),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.fetched_at or 0)),
            )

    def _save(self) -> None:
        with self._lock:
            data = {
                "desired": self._raw,
                "done_version": self.done_version,
                "fetched_at": self.fetched_at,
                "cleaned": {str(k): [v[0], v[1], list(v[2])] for k, v in self.cleaned.items()},
                "runtime": self.runtime.name,
                "workloads": [s.as_report() for s in self._statuses],
                "volumes": [v.as_report() | {"state": v.state} for v in self._volumes.values()],
                "error": self._error,
            }
        body = json.dumps(data, sort_keys=True).encode()
        if body == self._saved:
            return
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            atomic_write(self.path, body)
            self._saved = body
        except OSError as exc:
            log.error("cannot save the desired workloads to %s: %s", self.path, exc)


def read_state(state_dir: str) -> dict[str, Any] | None:
    """The reconciler's saved state (for `suanli-agent status`), without creating anything; None if there is none."""
    try:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _status(seen: Observed) -> WorkloadStatus:
    return WorkloadStatus(
        id=seen.id,
        state=seen.state,
        generation=seen.generation,
        progress=seen.progress,
        ports=dict(seen.ports),
        message=seen.message,
        exit_code=seen.exit_code,
        gpus=seen.gpus,
    )
