"""Customers' containers through the Docker Engine API, with the `docker` PyPI package (the `agent-docker` extra).

Every container of ours carries the labels
    suanli.workload=<id>  suanli.lease=<lease>  suanli.spec=<sha256 of the spec fields>  suanli.generation=<n>
and is named `suanli-workload-<id>`. `observe` finds them by label, so a restarted agent adopts what runs (it never
starts a workload twice); the reconciler recreates a container whose spec or generation differs from the desired one.

What a container gets:
- Cards: the env `NVIDIA_VISIBLE_DEVICES=<the leased UUIDs, comma-joined>` always (it overrides the image's and the
  customer's), and, when `docker info` shows the `nvidia` runtime or an NVIDIA CDI spec, a device request for exactly
  those UUIDs (`--gpus "device=..."`). Without the NVIDIA container toolkit a workload with cards fails (unless the
  agent runs `--simulate`, whose cards do not exist: then only the env is set).
- Limits: `cpus` as nano-CPUs, `memory_mb` as the memory limit (swap included, so no swap beyond it; /dev/shm gets
  half of it), `disk_gb` as the size of the writable layer where the storage driver supports it (overlay2 on xfs with
  pquota); a driver that refuses it gets the container without, and the workload's message says so.
- SSH: the keys in `<state_dir>/workloads/<id>/ssh/authorized_keys` (directory 0700, file 0600), bind-mounted
  read-only at /root/.ssh, and the env `PUBLIC_KEY` (the keys, one a line: the RunPod convention for images whose
  start script installs the keys itself).
- Ports: each container port on a free host port of the desired `port_range`, published on `publish_address`: ports
  of our other containers, ports other containers publish and ports that cannot be bound on that address are skipped.

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
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
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
    Operation,
    Operations,
    Runtime,
    RuntimeUnavailable,
    WorkloadSpec,
)

log = logging.getLogger("suanli.agent.workloads")

LABEL_WORKLOAD = "suanli.workload"
LABEL_LEASE = "suanli.lease"
LABEL_SPEC = "suanli.spec"
LABEL_GENERATION = "suanli.generation"
NAME_PREFIX = "suanli-workload-"
DEFAULT_URL = "unix:///var/run/docker.sock"
NO_TOOLKIT = "the NVIDIA container runtime is not installed on this host (nvidia-container-toolkit)"
RETRY_S = 60.0
API_TIMEOUT_S = 60
PULL_TIMEOUT_S = 300  # a pull that sends nothing for this long has stalled
PORT_ATTEMPTS = 3
HELD = "held"  # a marker file in the workload directory: stopped by us, start it when wanted running again


def import_docker() -> Any:
    """The `docker` package, or RuntimeUnavailable saying how to install it."""
    try:
        import docker
    except ImportError:
        raise RuntimeUnavailable(
            "the Docker runtime needs the docker package: pip install 'suanli[agent-docker]' "
            "(or pip install 'docker>=7.1,<8') in the agent's environment"
        ) from None
    return docker


def default_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


def docker_answers(url: str | None = None, timeout: float = 3.0) -> bool:
    """True when the docker package imports and the daemon at `url` answers a ping (for choosing the runtime)."""
    try:
        docker = import_docker()
        client = docker.DockerClient(base_url=url or default_url(), timeout=timeout)
    except Exception:  # no package, a malformed URL
        return False
    try:
        return bool(client.ping())
    except Exception:  # no socket, no permission, not a Docker daemon
        return False
    finally:
        with contextlib.suppress(Exception):
            client.close()


def probe(url: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """What `suanli-agent status` says of the Docker daemon; creates nothing."""
    url = url or default_url()
    try:
        docker = import_docker()
    except RuntimeUnavailable as exc:
        return {"ok": False, "url": url, "error": str(exc)}
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout)
        info = client.info()
    except Exception as exc:  # no socket, no permission, a malformed URL
        return {"ok": False, "url": url, "error": f"the Docker daemon does not answer: {exc}"}
    with contextlib.suppress(Exception):
        client.close()
    return {
        "ok": True,
        "url": url,
        "server_version": info.get("ServerVersion"),
        "storage_driver": info.get("Driver"),
        "nvidia": detect_nvidia(info),
    }


def detect_nvidia(info: dict[str, Any]) -> bool:
    """The NVIDIA container runtime is registered, or an NVIDIA CDI spec is in one of the daemon's CDI dirs."""
    if "nvidia" in (info.get("Runtimes") or {}):
        return True
    for directory in info.get("CDISpecDirs") or []:
        with contextlib.suppress(OSError):
            if any(name.startswith("nvidia") for name in os.listdir(directory)):
                return True
    return False


@dataclass(frozen=True)
class _Failure:
    spec_hash: str
    generation: int
    lease: int
    gpus: tuple[str, ...]
    message: str
    at: float


class _Cancelled(Exception):
    pass


class _PullFailed(Exception):
    pass


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
    ):
        self.docker = import_docker()
        self.base_url = base_url or default_url()
        self.state_dir = state_dir
        self.publish_address = publish_address
        self.simulate = simulate
        self.retry_s = retry_s
        self.clock = clock
        self.ops = Operations()
        self._lock = threading.Lock()
        self._failures: dict[int, _Failure] = {}
        self._reserved: set[int] = set()  # host ports chosen for containers being created
        self._messages: dict[int, str] = {}  # a note kept with a running workload (the disk limit refused, ...)
        try:  # the client asks the daemon for its API version as it is made
            self.client = self.docker.DockerClient(base_url=self.base_url, timeout=API_TIMEOUT_S)
            self.info = self.client.info()
        except Exception as exc:
            raise RuntimeUnavailable(f"the Docker daemon at {self.base_url} does not answer: {exc}") from None
        self.nvidia = detect_nvidia(self.info)
        self.boot_time = _boot_time()
        os.makedirs(self.workloads_dir, mode=0o700, exist_ok=True)

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
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # -- observing ----------------------------------------------------------------------------------------------

    def _ours(self, client: Any = None) -> dict[int, Any]:
        """Our containers by workload id (the newest if, against all odds, there are two)."""
        found: dict[int, Any] = {}
        containers = (client or self.client).containers.list(
            all=True, filters={"label": LABEL_WORKLOAD}, ignore_removed=True
        )
        for container in containers:
            try:
                workload_id = int(container.labels.get(LABEL_WORKLOAD, ""))
            except ValueError:
                continue
            found[workload_id] = container
        return found

    def observe(self) -> dict[int, Observed]:
        containers = self._ours()
        ops = self.ops.all()
        with self._lock:
            failures = dict(self._failures)
            messages = dict(self._messages)
        found: dict[int, Observed] = {}
        for workload_id, container in containers.items():
            found[workload_id] = self._observed(workload_id, container, messages.get(workload_id, ""))
        for workload_id, failure in failures.items():
            if workload_id not in found or found[workload_id].state != RUNNING:
                before = found.get(workload_id)
                found[workload_id] = Observed(
                    id=workload_id,
                    state=FAILED,
                    lease=failure.lease,
                    spec_hash=failure.spec_hash,
                    generation=failure.generation,
                    message=failure.message,
                    gpus=failure.gpus,
                    ports=before.ports if before else {},
                )
        for workload_id, op in ops.items():
            before = found.get(workload_id)
            spec = op.spec
            found[workload_id] = Observed(
                id=workload_id,
                state=op.state,
                lease=before.lease if before else (spec.lease if spec else None),
                spec_hash=before.spec_hash if before else (spec.spec_hash if spec else ""),
                generation=before.generation if before else (spec.generation if spec else 0),
                progress=op.progress,
                ports=before.ports if before else {},
                message=op.message,
                gpus=before.gpus if before else (spec.gpus if spec else ()),
                busy=True,
            )
        for workload_id in self._scratch_ids():
            if workload_id not in found:  # a scratch directory without its container: left to be removed
                found[workload_id] = Observed(id=workload_id, state=EXITED, message="scratch directory left behind")
        return found

    def _observed(self, workload_id: int, container: Any, note: str) -> Observed:
        attrs = container.attrs
        labels = attrs.get("Config", {}).get("Labels") or {}
        state = attrs.get("State") or {}
        status = state.get("Status") or container.status
        exit_code = None
        message = note
        if status == "running":
            kind = RUNNING
            if state.get("Paused"):
                message = "paused"
        elif status in ("created", "restarting"):
            kind = STARTING
        elif status == "removing":
            kind = STOPPING
        else:  # exited, dead
            kind = EXITED
            exit_code = state.get("ExitCode")
            if os.path.exists(os.path.join(self.workload_dir(workload_id), HELD)):
                message = "stopped"
            elif state.get("OOMKilled"):
                message = "killed: out of memory"
            elif state.get("Error"):
                message = str(state["Error"])[:300]
            else:
                message = f"exited with code {exit_code}"
        return Observed(
            id=workload_id,
            state=kind,
            lease=_int(labels.get(LABEL_LEASE)),
            spec_hash=labels.get(LABEL_SPEC, ""),
            generation=_int(labels.get(LABEL_GENERATION)) or 0,
            ports=_bound_ports(attrs),
            message=message,
            exit_code=exit_code,
            gpus=_env_gpus(attrs),
        )

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

    def _op_client(self, timeout: int = API_TIMEOUT_S) -> Any:
        """A client of the operation's own (a requests session is not shared across threads)."""
        return self.docker.DockerClient(base_url=self.base_url, timeout=timeout, version=self.client.api.api_version)

    def _fail(self, spec: WorkloadSpec, message: str) -> None:
        log.error("workload %s failed: %s", spec.id, message)
        with self._lock:
            self._failures[spec.id] = _Failure(
                spec.spec_hash, spec.generation, spec.lease, spec.gpus, message[:500], self.clock()
            )

    def _create(self, op: Operation, spec: WorkloadSpec, port_range: tuple[int, int] | None) -> None:
        errors = self.docker.errors
        client = self._op_client(PULL_TIMEOUT_S)
        try:
            if spec.gpus and not self.simulate and not self.nvidia:
                self.nvidia = detect_nvidia(client.info())  # installed since the agent started?
                if not self.nvidia:
                    self._fail(spec, NO_TOOLKIT)
                    return
            if not spec.image:
                self._fail(spec, "no image to run")
                return
            self._write_keys(spec)
            self._pull(op, client, spec.image)
            op.state, op.progress, op.message = STARTING, None, ""
            self._cancel_point(op)
            container = self._create_and_start(op, client, spec, port_range)
            if container is not None:
                log.info("workload %s: started container %s from %s", spec.id, container.short_id, spec.image)
        except _Cancelled:
            log.info("workload %s: creation cancelled", spec.id)
            with contextlib.suppress(Exception):
                client.containers.get(NAME_PREFIX + str(spec.id)).remove(v=True, force=True)
            shutil.rmtree(self.workload_dir(spec.id), ignore_errors=True)
        except _PullFailed as exc:
            self._fail(spec, str(exc))
        except errors.APIError as exc:
            self._fail(spec, _explain(exc))
        except (errors.DockerException, OSError, ValueError) as exc:  # requests' errors are OSErrors
            self._fail(spec, f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _cancel_point(self, op: Operation) -> None:
        if op.cancelled.is_set():
            raise _Cancelled()

    def _pull(self, op: Operation, client: Any, image: str) -> None:
        errors = self.docker.errors
        try:
            client.images.get(image)
            return  # present: never pulled again
        except errors.ImageNotFound:
            pass
        repository, tag = self.docker.utils.parse_repository_tag(image)
        op.state, op.progress, op.message = PULLING, 0, "pulling 0%"
        layers: dict[str, tuple[int, int]] = {}  # layer id -> (bytes done, bytes in all)
        try:
            for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                self._cancel_point(op)
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    raise _PullFailed(f"cannot pull {image}: {str(event['error'])[:400]}")
                layer, status = event.get("id"), str(event.get("status", ""))
                if not layer:
                    continue
                current, total = layers.get(layer, (0, 0))
                detail = event.get("progressDetail") or {}
                if status == "Downloading" and detail.get("total"):
                    current, total = int(detail.get("current", 0)), int(detail["total"])
                elif status in ("Download complete", "Pull complete", "Already exists", "Verifying Checksum"):
                    current = total
                layers[layer] = (current, total)
                total_bytes = sum(t for _, t in layers.values())
                if total_bytes:
                    progress = min(99, int(100 * sum(c for c, _ in layers.values()) / total_bytes))
                    op.progress, op.message = progress, f"pulling {progress}%"
            client.images.get(image)
        except (errors.APIError, errors.ImageNotFound) as exc:  # a missing or private image, an unreachable registry
            raise _PullFailed(f"cannot pull {image}: {_explain(exc)}") from None
        op.progress = 100

    def _write_keys(self, spec: WorkloadSpec) -> None:
        ssh = os.path.join(self.workload_dir(spec.id), "ssh")
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(ssh), 0o700)
        os.chmod(ssh, 0o700)
        path = os.path.join(ssh, "authorized_keys")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write("".join(f"{key}\n" for key in spec.ssh_keys))
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.workload_dir(spec.id), HELD))

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
                    if "storage_opt" not in kwargs or not _storage_refused(exc):
                        raise
                    kwargs.pop("storage_opt")
                    notes.append(
                        f"disk limit of {spec.limits.disk_gb} GB not enforced: the storage driver refuses a size "
                        f"({_explain(exc)[:160]})"
                    )
                    log.warning("workload %s: %s", spec.id, notes[-1])
                    container = client.containers.create(spec.image, **kwargs)
                with self._lock:
                    if notes:
                        self._messages[spec.id] = "; ".join(notes)
                    else:
                        self._messages.pop(spec.id, None)
                self._cancel_point(op)
                container.start()
                return container
            except errors.APIError as exc:
                if container is not None:
                    with contextlib.suppress(errors.DockerException):
                        container.remove(v=True, force=True)
                if not _port_taken(exc):
                    raise
                log.warning("workload %s: a host port was taken meanwhile (%s): choosing others", spec.id, exc)
                refused.update(ports.values())
            finally:
                with self._lock:
                    self._reserved.difference_update(ports.values())
        self._fail(spec, "no usable host port after several tries")
        return None

    def _container_kwargs(self, spec: WorkloadSpec) -> dict[str, Any]:
        env = dict(spec.env)
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
        if spec.ssh_keys:
            env["PUBLIC_KEY"] = "\n".join(spec.ssh_keys)
        kwargs: dict[str, Any] = {
            "name": NAME_PREFIX + str(spec.id),
            "command": list(spec.command) or None,
            "environment": env,
            "labels": {
                LABEL_WORKLOAD: str(spec.id),
                LABEL_LEASE: str(spec.lease),
                LABEL_SPEC: spec.spec_hash,
                LABEL_GENERATION: str(spec.generation),
            },
            "hostname": f"lease{spec.lease}",
            "detach": True,
        }
        if spec.ssh_keys:
            ssh = os.path.join(self.workload_dir(spec.id), "ssh")
            kwargs["volumes"] = {ssh: {"bind": "/root/.ssh", "mode": "ro"}}
        if spec.gpus and self.nvidia and not self.simulate:
            kwargs["device_requests"] = [
                self.docker.types.DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])
            ]
        limits = spec.limits
        # The platform's share of what the provider registered, never more than this host really has (the engine
        # refuses a CPU or memory limit above it).
        host_cpus = float(self.info.get("NCPU") or 0) or None
        host_mb = int(self.info.get("MemTotal") or 0) // 2**20 or None
        if limits.cpus:
            cpus = min(limits.cpus, host_cpus) if host_cpus else limits.cpus
            kwargs["nano_cpus"] = int(cpus * 1e9)
        if limits.memory_mb:
            memory_mb = min(limits.memory_mb, host_mb) if host_mb else limits.memory_mb
            kwargs["mem_limit"] = memory_mb * 2**20
            kwargs["memswap_limit"] = memory_mb * 2**20
            kwargs["shm_size"] = memory_mb * 2**19
        if limits.disk_gb:
            kwargs["storage_opt"] = {"size": f"{limits.disk_gb}G"}
        return kwargs

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
            used.update(_bound_ports(container.attrs).values())
        for summary in client.api.containers():  # what the other running containers publish
            used.update(p["PublicPort"] for p in summary.get("Ports") or [] if p.get("PublicPort"))
        chosen: dict[int, int] = {}
        with self._lock:
            used |= self._reserved
            candidates = iter(range(port_range[0], port_range[1] + 1))
            for container_port in wanted:
                for host_port in candidates:
                    if host_port not in used and _bindable(self.publish_address, host_port):
                        chosen[container_port] = host_port
                        break
                else:
                    return None
            self._reserved.update(chosen.values())
        return chosen

    def _start(self, op: Operation, spec: WorkloadSpec) -> None:
        client = self._op_client()
        try:
            container = client.containers.get(NAME_PREFIX + str(spec.id))
            container.start()
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.workload_dir(spec.id), HELD))
            log.info("workload %s: started container %s again", spec.id, container.short_id)
        except self.docker.errors.APIError as exc:
            self._fail(spec, f"cannot start its container: {_explain(exc)}")
        except self.docker.errors.DockerException as exc:
            self._fail(spec, f"cannot start its container: {exc}")
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _stop(self, op: Operation, workload_id: int, grace: float) -> None:
        client = self._op_client()
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
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def _remove(self, op: Operation, workload_id: int, grace: float) -> None:
        errors = self.docker.errors
        client = self._op_client()
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
        finally:
            with contextlib.suppress(Exception):
                client.close()

    # -- facts about the host -----------------------------------------------------------------------------------

    def _rebooted(self, container: Any) -> bool:
        """The container stopped before the host last booted: the host went down, not the customer's process."""
        finished = _parse_docker_time(container.attrs.get("State", {}).get("FinishedAt"))
        return self.boot_time is not None and finished is not None and finished < self.boot_time


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _explain(exc: Any) -> str:
    return str(getattr(exc, "explanation", None) or exc)[:500]


def _storage_refused(exc: Any) -> bool:
    text = _explain(exc).lower()
    return "storage" in text or "storage-opt" in text or "quota" in text


def _port_taken(exc: Any) -> bool:
    text = _explain(exc).lower()
    return "port is already allocated" in text or "address already in use" in text


def _bound_ports(attrs: dict[str, Any]) -> dict[str, int]:
    """Container port -> host port, from the bindings it was created with (kept while it is stopped too)."""
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    ports: dict[str, int] = {}
    for key, entries in bindings.items():
        for entry in entries or []:
            host_port = _int((entry or {}).get("HostPort"))
            if host_port:
                ports[key.split("/")[0]] = host_port
                break
    return ports


def _env_gpus(attrs: dict[str, Any]) -> tuple[str, ...]:
    for item in (attrs.get("Config") or {}).get("Env") or []:
        if item.startswith("NVIDIA_VISIBLE_DEVICES="):
            value = item.split("=", 1)[1]
            return tuple(g for g in value.split(",") if g)
    return ()


def _bindable(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _parse_docker_time(value: Any) -> float | None:
    """Docker's RFC 3339 time with nanoseconds ("2026-12-07T15:00:00.123456789Z"); None for its zero time."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(value[:19] + "+00:00").timestamp()
    except ValueError:
        return None
