"""What the Docker runtime asks the engine for when it creates a workload's container: its name and labels, the
environment, the SSH keys' mount, the NVIDIA device request, the resource limits, and the host ports it publishes.

What a container gets:
- Cards: the env `NVIDIA_VISIBLE_DEVICES=<the leased UUIDs, comma-joined>` always (it overrides the image's and the
  customer's), and, when `docker info` shows the `nvidia` runtime or an NVIDIA CDI spec, a device request for exactly
  those UUIDs (`--gpus "device=..."`). Without the NVIDIA container toolkit a workload with cards fails (unless the
  agent runs `--simulate`, whose cards do not exist: then only the env is set).
- Limits: `cpus` as nano-CPUs, `memory_mb` as the memory limit (swap included, so no swap beyond it; /dev/shm gets
  half of it), `disk_gb` as the size of the writable layer where the storage driver supports it (overlay2 on xfs with
  pquota); a driver that refuses it gets the container without, and the workload's message says so.
- Volumes: each volume's mount directory on the host (`agents.runtime.volumes`), bind-mounted read-write at its
  path; the label `suanli.volumes` names them, so no volume is wiped while a container that mounts it exists.
- SSH: the keys in `<state_dir>/workloads/<id>/ssh/authorized_keys` (directory 0700, file 0600), bind-mounted
  read-only at /root/.ssh, and the env `PUBLIC_KEY` (the keys, one a line: the RunPod convention for images whose
  start script installs the keys itself).
- Ports: each container port on a free host port of the desired `port_range`, published on `publish_address`: ports
  of our other containers, ports other containers publish and ports that cannot be bound on that address are skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from agents.runtime.base import WorkloadSpec

LABEL_WORKLOAD = "suanli.workload"
LABEL_LEASE = "suanli.lease"
LABEL_SPEC = "suanli.spec"
LABEL_GENERATION = "suanli.generation"
LABEL_VOLUMES = "suanli.volumes"  # the ids of the volumes it mounts, comma-joined (only when it mounts some)
NAME_PREFIX = "suanli-workload-"
HELD = "held"  # a marker file in the workload directory: stopped by us, start it when wanted running again


def container_kwargs(
    spec: WorkloadSpec,
    *,
    docker: Any,
    info: dict[str, Any],
    nvidia: bool,
    simulate: bool,
    workload_dir: str,
    volume_dirs: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for `spec` (all but its ports); `volume_dirs` holds the host
    directory where each of its volumes is mounted."""
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
        "hostname": f"lease{spec.lease}" if spec.lease else "data-access",
        "detach": True,
    }
    binds: dict[str, dict[str, str]] = {}
    if spec.ssh_keys:
        binds[os.path.join(workload_dir, "ssh")] = {"bind": "/root/.ssh", "mode": "ro"}
    for volume in spec.volumes:
        source = (volume_dirs or {}).get(volume.id)
        if not source:
            raise ValueError(f"volume {volume.id} is not mounted on this host")
        binds[source] = {"bind": volume.path, "mode": "rw"}
    if binds:
        kwargs["volumes"] = binds
    if spec.volumes:
        kwargs["labels"][LABEL_VOLUMES] = ",".join(str(v.id) for v in spec.volumes)
    if spec.gpus and nvidia and not simulate:
        kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])]
    kwargs.update(resource_limits(spec, info))
    return kwargs


def resource_limits(spec: WorkloadSpec, info: dict[str, Any]) -> dict[str, Any]:
    """CPU, memory, /dev/shm and disk limits as `containers.create` takes them."""
    kwargs: dict[str, Any] = {}
    limits = spec.limits
    # The platform's share of what the provider registered, never more than this host really has (the engine
    # refuses a CPU or memory limit above it).
    host_cpus = float(info.get("NCPU") or 0) or None
    host_mb = int(info.get("MemTotal") or 0) // 2**20 or None
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


def write_keys(workload_dir: str, ssh_keys: tuple[str, ...]) -> None:
    """The workload's authorized_keys (directories 0700, file 0600); a start clears the `held` marker."""
    ssh = os.path.join(workload_dir, "ssh")
    os.makedirs(ssh, mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(ssh), 0o700)
    os.chmod(ssh, 0o700)
    path = os.path.join(ssh, "authorized_keys")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write("".join(f"{key}\n" for key in ssh_keys))
    with contextlib.suppress(OSError):
        os.remove(os.path.join(workload_dir, HELD))


def int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def bound_ports(attrs: dict[str, Any]) -> dict[str, int]:
    """Container port -> host port, from the bindings it was created with (kept while it is stopped too)."""
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    ports: dict[str, int] = {}
    for key, entries in bindings.items():
        for entry in entries or []:
            host_port = int_or_none((entry or {}).get("HostPort"))
            if host_port:
                ports[key.split("/")[0]] = host_port
                break
    return ports


def free_ports(
    wanted: tuple[int, ...], port_range: tuple[int, int], used: set[int], address: str
) -> dict[int, int] | None:
    """Container port -> the next host port of the range not in `used` and bindable on `address`; None if too few."""
    chosen: dict[int, int] = {}
    candidates = iter(range(port_range[0], port_range[1] + 1))
    for container_port in wanted:
        for host_port in candidates:
            if host_port not in used and bindable(address, host_port):
                chosen[container_port] = host_port
                break
        else:
            return None
    return chosen


def bindable(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
