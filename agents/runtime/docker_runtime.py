"""Customers' containers through the Docker Engine API, with the `docker` PyPI package (the `agent-docker` extra).

Every container of ours carries the labels
    suanli.workload=<id>  suanli.lease=<lease>  suanli.spec=<sha256 of the spec fields>  suanli.generation=<n>
    suanli.server=<the server's id>  (`owner`: the agent's own, from its credentials)
and is named `suanli-workload-<id>`. `observe` finds them by label, so a restarted agent adopts what runs (it never
starts a workload twice); the reconciler recreates a container whose spec or generation differs from the desired one.
Several agents may share one Docker daemon (one host, several servers): an agent sees, stops and removes only
containers labelled with its own server. A container of before that label (no suanli.server) is adopted only when
its workload id is in this agent's desired state (`claim`), and then kept as ours (the ids in
`adopted-containers.json` of the state directory) until it is gone; another one is never touched.

What a container gets (its labels, env, mounts, devices, limits and ports) is built in `agents.runtime.docker_spec`;
how a container's state reads, in `docker_state`; the image pull, in `docker_pull`; the daemon's probing, in
`docker_daemon`. This module holds the runtime and its operations.

Slow work runs in background threads (`agents.runtime.base.Operations`), one per workload: the image pull (skipped
when the image is present; state `pulling` with its progress), creation and start; a stop (`container.stop(timeout=
grace)`: the image's stop signal, SIGTERM by default, then SIGKILL after `grace`); a removal (the stop, then
`remove(v=True, force=True)` and the scratch directory). A pull or create failure marks the workload `failed` with the
reason, and it is tried again after `retry_s`. A container whose own process ended is `exited` with its exit code and
stays so until a restart request; one stopped by `stop` starts again when wanted running again, and one that ended
because the host went down (it finished before the last boot) is started again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from agents.runtime.base import (
    EXITED,
    PENDING,
    STARTING,
    STOPPING,
    Observed,
    Operation,
    Operations,
    Runtime,
    RuntimeUnavailable,
    WorkloadSpec,
)
from agents.runtime.docker_daemon import DEFAULT_URL as DEFAULT_URL
from agents.runtime.docker_daemon import (
    boot_time,
    default_url,
    detect_nvidia,
    explain,
    import_docker,
    parse_docker_time,
    port_taken,
    storage_refused,
)
from agents.runtime.docker_daemon import docker_answers as docker_answers
from agents.runtime.docker_daemon import probe as probe
from agents.runtime.docker_pull import Cancelled, PullFailed, cancel_point, pull
from agents.runtime.docker_spec import (
    HELD,
    LABEL_WORKLOAD,
    NAME_PREFIX,
    bound_ports,
    container_kwargs,
    free_ports,
    write_keys,
)
from agents.runtime.docker_spec import LABEL_GENERATION as LABEL_GENERATION
from agents.runtime.docker_spec import LABEL_LEASE as LABEL_LEASE
from agents.runtime.docker_spec import LABEL_SPEC as LABEL_SPEC
from agents.runtime.docker_state import Failure, add_failures, add_operations, observed
from agents.runtime.volumes import Volumes, VolumeStore
from agents.spool import atomic_write

log = logging.getLogger("suanli.agent.workloads")

NO_TOOLKIT = "the NVIDIA container runtime is not installed on this host (nvidia-container-toolkit)"
RETRY_S = 60.0
API_TIMEOUT_S = 60
PULL_TIMEOUT_S = 300  # a pull that sends nothing for this long has stalled
PORT_ATTEMPTS = 3
LABEL_SERVER = "suanli.server"
ADOPTED_FILE = "adopted-containers.json"
LOG_TAIL_LINES = 20_000  # lines read for a tail: more than 64 KiB holds unless lines average under 4 bytes


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(
        self,
        state_dir: str,
        base_url: str | None = None,
        *,
        publish_address: str = "0.0.0.0",  # noqa: S104 - customers connect from anywhere; the provider's firewall
        simulate: bool = False,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        volumes_dir: str | None = None,
        volumes: Volumes | None = None,
        owner: str | None = None,
    ):
        self.docker = import_docker()
        # The server's id its containers are labelled with; None (a runtime made without credentials): every container
        # labelled suanli.workload is ours, as before.
        self.owner = owner
        self._claimable: set[int] = set()  # the desired state's workload ids (`claim`)
        self.base_url = base_url or default_url()
        self.state_dir = state_dir
        self.publish_address = publish_address
        self.simulate = simulate
        self.retry_s = retry_s
        self.clock = clock
        self.ops = Operations()
        self._lock = threading.Lock()
        self._failures: dict[int, Failure] = {}
        self._reserved: set[int] = set()  # host ports chosen for containers being created
        self._messages: dict[int, str] = {}  # a note kept with a running workload (the disk limit refused, ...)
        try:  # the client asks the daemon for its API version as it is made
            self.client = self.docker.DockerClient(base_url=self.base_url, timeout=API_TIMEOUT_S)
            self.info = self.client.info()
        except Exception as exc:
            raise RuntimeUnavailable(f"the Docker daemon at {self.base_url} does not answer: {exc}") from None
        self.nvidia = detect_nvidia(self.info)
        self.boot_time = boot_time()
        os.makedirs(self.workloads_dir, mode=0o700, exist_ok=True)
        self._adopted: set[int] = self._load_adopted()  # unlabelled containers of before taken as ours
        self.volumes = volumes or VolumeStore(volumes_dir or os.path.join(state_dir, "volumes"))

    @property
    def workloads_dir(self) -> str:
        return os.path.join(self.state_dir, "workloads")

    def workload_dir(self, workload_id: int) -> str:
        return os.path.join(self.workloads_dir, str(int(workload_id)))

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.name,
            "url": self.base_url,
            "server_version": self.info.get("ServerVersion"),
            "storage_driver": self.info.get("Driver"),
            "nvidia": self.nvidia,
            "publish_address": self.publish_address,
            **self.volumes.describe(),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # -- observing ----------------------------------------------------------------------------------------------

    def claim(self, workload_ids: set[int]) -> None:
        with self._lock:
            self._claimable = set(workload_ids)

    def _load_adopted(self) -> set[int]:
        try:
            with open(os.path.join(self.state_dir, ADOPTED_FILE), encoding="utf-8") as fh:
                return {int(i) for i in json.load(fh)}
        except (OSError, ValueError, TypeError):
            return set()

    def _ours(self, client: Any = None) -> dict[int, Any]:
        """Our containers by workload id (the newest if, against all odds, there are two): those labelled with our
        server, and unlabelled ones of before that we adopted (see the module docstring); never another agent's."""
        found: dict[int, Any] = {}
        unlabelled: set[int] = set()
        containers = (client or self.client).containers.list(
            all=True, filters={"label": LABEL_WORKLOAD}, ignore_removed=True
        )
        with self._lock:
            adoptable = self._adopted | self._claimable
        for container in containers:
            try:
                workload_id = int(container.labels.get(LABEL_WORKLOAD, ""))
            except ValueError:
                continue
            if self.owner is not None:
                owner = container.labels.get(LABEL_SERVER)
                if owner is None:
                    unlabelled.add(workload_id)
                    if workload_id not in adoptable:
                        continue
                elif owner != self.owner:
                    continue  # another agent's, on the same daemon
            found[workload_id] = container
        if self.owner is not None:
            self._keep_adopted(unlabelled & adoptable)
        return found

    def _keep_adopted(self, adopted: set[int]) -> None:
        """Remember the unlabelled containers taken as ours (those still there), across restarts of the agent."""
        with self._lock:
            if adopted == self._adopted:
                return
            self._adopted = set(adopted)
            data = json.dumps(sorted(adopted)).encode()
        try:
            atomic_write(os.path.join(self.state_dir, ADOPTED_FILE), data)
        except OSError as exc:
            log.warning("cannot record the adopted containers: %s", exc)

    def observe(self) -> dict[int, Observed]:
        containers = self._ours()
        ops = self.ops.all()
        with self._lock:
            failures = dict(self._failures)
            messages = dict(self._messages)
        found: dict[int, Observed] = {}
        for workload_id, container in containers.items():
            note = messages.get(workload_id, "")
            found[workload_id] = observed(workload_id, container, note, self.workload_dir(workload_id))
        add_failures(found, failures)
        add_operations(found, ops)
        for workload_id in self._scratch_ids():
            if workload_id not in found:  # a scratch directory without its container: left to be removed
                found[workload_id] = Observed(id=workload_id, state=EXITED, message="scratch directory left behind")
        return found

    def logs(self, workload_id: int, limit: int) -> bytes | None:
        """The container's stdout and stderr as Docker keeps them (its log driver), the last LOG_TAIL_LINES lines
        cut to the last `limit` bytes; None when there is no container (or the daemon cannot say)."""
        container = self._ours().get(workload_id)
        if container is None:
            return None
        try:
            data = container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES, timestamps=False)
        except Exception as exc:  # removed meanwhile, a log driver that cannot be read ("none", "syslog")
            log.debug("no output of workload %s: %s", workload_id, exc)
            return None
        return bytes(data[-limit:]) if isinstance(data, bytes | bytearray) else None

    def _scratch_ids(self) -> list[int]:
        try:
            names = os.listdir(self.workloads_dir)
        except OSError:
            return []
        return [int(n) for n in names if n.isdigit()]

    # -- requests -----------------------------------------------------------------------------------------------

    def ensure(self, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        if self.ops.get(spec.id) is not None:
            return
        with self._lock:
            failure = self._failures.get(spec.id)
            if failure is not None:
                same = failure.spec_hash == spec.spec_hash and failure.generation == spec.generation
                if same and self.clock() - failure.at < self.retry_s:
                    return
                del self._failures[spec.id]
        container = self._ours().get(spec.id)
        if container is None:
            self._begin(spec.id, "create", PENDING, lambda op: self._create(op, spec, port_range), spec)
            return
        status = container.attrs.get("State", {}).get("Status") or container.status
        held = os.path.exists(os.path.join(self.workload_dir(spec.id), HELD))
        if status == "created" or (status in ("exited", "dead") and (held or self._rebooted(container))):
            self._begin(spec.id, "start", STARTING, lambda op: self._start(op, spec), spec)

    def stop(self, workload_id: int, grace: float) -> None:
        if self.ops.cancel(workload_id) or self.ops.get(workload_id) is not None:
            return
        self._begin(workload_id, "stop", STOPPING, lambda op: self._stop(op, workload_id, grace))

    def remove(self, workload_id: int, grace: float) -> None:
        if self.ops.cancel(workload_id, ("create", "start")) or self.ops.get(workload_id) is not None:
            return
        self._begin(workload_id, "remove", STOPPING, lambda op: self._remove(op, workload_id, grace))

    def _begin(
        self, workload_id: int, kind: str, state: str, work: Callable[[Operation], None], spec: Any = None
    ) -> None:
        if self.ops.begin(workload_id, kind, state, work, spec):
            log.info("workload %s: %s", workload_id, kind)

    # -- operations (in their own threads) ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _op_client(self, timeout: int = API_TIMEOUT_S) -> Iterator[Any]:
        """A client of the operation's own (a requests session is not shared across threads), closed after it."""
        client = self.docker.DockerClient(base_url=self.base_url, timeout=timeout, version=self.client.api.api_version)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _fail(self, spec: WorkloadSpec, message: str) -> None:
        log.error("workload %s failed: %s", spec.id, message)
        with self._lock:
            self._failures[spec.id] = Failure(
                spec.spec_hash, spec.generation, spec.lease, spec.gpus, message[:500], self.clock()
            )

    def _create(self, op: Operation, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        errors = self.docker.errors
        with self._op_client(PULL_TIMEOUT_S) as client:
            try:
                if spec.gpus and not self.simulate and not self.nvidia:
                    self.nvidia = detect_nvidia(client.info())  # installed since the agent started?
                    if not self.nvidia:
                        self._fail(spec, NO_TOOLKIT)
                        return
                if not spec.image:
                    self._fail(spec, "no image to run")
                    return
                missing = [str(v.id) for v in spec.volumes if self.volumes.path(v.id) is None]
                if missing:  # the reconciler waits for them; one wiped or unmounted meanwhile stops it here
                    self._fail(spec, f"volume(s) {', '.join(missing)} not ready on this host")
                    return
                write_keys(self.workload_dir(spec.id), spec.ssh_keys)
                self._pull(op, client, spec.image)
                op.state, op.progress, op.message = STARTING, None, ""
                cancel_point(op)
                container = self._create_and_start(op, client, spec, port_range)
                if container is not None:
                    log.info("workload %s: started container %s from %s", spec.id, container.short_id, spec.image)
            except Cancelled:
                log.info("workload %s: creation cancelled", spec.id)
                with contextlib.suppress(Exception):
                    client.containers.get(NAME_PREFIX + str(spec.id)).remove(v=True, force=True)
                shutil.rmtree(self.workload_dir(spec.id), ignore_errors=True)
            except PullFailed as exc:
                self._fail(spec, str(exc))
            except errors.APIError as exc:
                self._fail(spec, explain(exc))
            except (errors.DockerException, OSError, ValueError) as exc:  # requests' errors are OSErrors
                self._fail(spec, f"{type(exc).__name__}: {exc}")

    def _pull(self, op: Operation, client: Any, image: str) -> None:
        pull(self.docker, op, client, image)

    def _container_kwargs(self, spec: WorkloadSpec) -> dict[str, Any]:
        kwargs = container_kwargs(
            spec,
            docker=self.docker,
            info=self.info,
            nvidia=self.nvidia,
            simulate=self.simulate,
            workload_dir=self.workload_dir(spec.id),
            volume_dirs={v.id: self.volumes.path(v.id) or "" for v in spec.volumes},
        )
        if self.owner is not None:
            kwargs["labels"][LABEL_SERVER] = self.owner
        return kwargs

    def _create_and_start(
        self, op: Operation, client: Any, spec: WorkloadSpec, port_range: tuple[int, int] | None
    ) -> Any:
        """Create and start the container; a host port taken meanwhile (by something outside Docker's view) is
        replaced by another, up to PORT_ATTEMPTS times. None after a failure (recorded)."""
        errors = self.docker.errors
        notes: list[str] = []
        kwargs = self._container_kwargs(spec)
        refused: set[int] = set()
        for _attempt in range(PORT_ATTEMPTS):
            ports = self._choose_ports(client, spec.ports, port_range, refused)
            if ports is None:
                self._fail(spec, f"no free host port for {len(spec.ports)} port(s) in the range {port_range}")
                return None
            container = None
            try:
                kwargs["ports"] = {f"{c}/tcp": (self.publish_address, h) for c, h in ports.items()}
                try:
                    container = client.containers.create(spec.image, **kwargs)
                except errors.APIError as exc:
                    if "storage_opt" not in kwargs or not storage_refused(exc):
                        raise
                    kwargs.pop("storage_opt")
                    notes.append(
                        f"disk limit of {spec.limits.disk_gb} GB not enforced: the storage driver refuses a size "
                        f"({explain(exc)[:160]})"
                    )
                    log.warning("workload %s: %s", spec.id, notes[-1])
                    container = client.containers.create(spec.image, **kwargs)
                with self._lock:
                    if notes:
                        self._messages[spec.id] = "; ".join(notes)
                    else:
                        self._messages.pop(spec.id, None)
                cancel_point(op)
                container.start()
                return container
            except errors.APIError as exc:
                if container is not None:
                    with contextlib.suppress(errors.DockerException):
                        container.remove(v=True, force=True)
                if not port_taken(exc):
                    raise
                log.warning("workload %s: a host port was taken meanwhile (%s): choosing others", spec.id, exc)
                refused.update(ports.values())
            finally:
                with self._lock:
                    self._reserved.difference_update(ports.values())
        self._fail(spec, "no usable host port after several tries")
        return None

    def _choose_ports(
        self, client: Any, wanted: tuple[int, ...], port_range: tuple[int, int] | None, refused: set[int]
    ) -> dict[int, int] | None:
        """Container port -> a free host port of the range, reserved until the container exists; None if too few."""
        if not wanted:
            return {}
        if port_range is None:
            return None
        used = set(refused)
        for container in self._ours(client).values():  # ours keep their ports while stopped
            used.update(bound_ports(container.attrs).values())
        for summary in client.api.containers():  # what the other running containers publish
            used.update(p["PublicPort"] for p in summary.get("Ports") or [] if p.get("PublicPort"))
        with self._lock:
            chosen = free_ports(wanted, port_range, used | self._reserved, self.publish_address)
            if chosen is not None:
                self._reserved.update(chosen.values())
        return chosen

    def _start(self, op: Operation, spec: WorkloadSpec) -> None:
        with self._op_client() as client:
            try:
                container = client.containers.get(NAME_PREFIX + str(spec.id))
                container.start()
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.workload_dir(spec.id), HELD))
                log.info("workload %s: started container %s again", spec.id, container.short_id)
            except self.docker.errors.APIError as exc:
                self._fail(spec, f"cannot start its container: {explain(exc)}")
            except self.docker.errors.DockerException as exc:
                self._fail(spec, f"cannot start its container: {exc}")

    def _stop(self, op: Operation, workload_id: int, grace: float) -> None:
        with self._op_client() as client:
            try:
                container = self._ours(client).get(workload_id)
                if container is None:
                    return
                directory = self.workload_dir(workload_id)
                os.makedirs(directory, mode=0o700, exist_ok=True)
                with open(os.path.join(directory, HELD), "w", encoding="utf-8"):
                    pass
                container.stop(timeout=max(0, int(grace)))
                log.info("workload %s: stopped (kept)", workload_id)
            except self.docker.errors.DockerException as exc:
                log.error("workload %s: cannot stop its container: %s", workload_id, exc)

    def _remove(self, op: Operation, workload_id: int, grace: float) -> None:
        errors = self.docker.errors
        with self._op_client() as client:
            try:
                container = self._ours(client).get(workload_id)
                if container is not None:
                    if container.status in ("running", "restarting", "paused"):
                        container.stop(timeout=max(0, int(grace)))
                    container.remove(v=True, force=True)
                    log.info("workload %s: container and its volumes removed", workload_id)
                shutil.rmtree(self.workload_dir(workload_id), ignore_errors=True)
                with self._lock:
                    self._failures.pop(workload_id, None)
                    self._messages.pop(workload_id, None)
            except errors.NotFound:
                pass  # removed meanwhile: the next observation tells
            except errors.DockerException as exc:
                log.error("workload %s: cannot remove its container: %s", workload_id, exc)

    # -- facts about the host -----------------------------------------------------------------------------------

    def _rebooted(self, container: Any) -> bool:
        """The container stopped before the host last booted: the host went down, not the customer's process."""
        finished = parse_docker_time(container.attrs.get("State", {}).get("FinishedAt"))
        return self.boot_time is not None and finished is not None and finished < self.boot_time
