"""Workload runtimes: how the agent runs what customers rent on this host.

- `docker` (`agents.runtime.docker_runtime`): containers through the Docker Engine API; needs the `docker` package
  (the `agent-docker` extra), a Docker daemon and, for cards, the NVIDIA container toolkit.
- `host` (`agents.runtime.host`): whole-server access, a Linux user per lease.
- `simulated` (`agents.runtime.simulated`): no processes, for `--simulate` demos and tests.

`agents.runtime.base` holds the `Runtime` interface and the shapes they share. The docker package is imported only
when the Docker runtime is made, so the agent runs without it.
"""

from __future__ import annotations

import os
from typing import Any

from agents.runtime.base import Runtime, RuntimeUnavailable

KINDS = ("docker", "host", "simulated", "none")


def choose_kind(requested: str | None, *, simulate: bool, docker_url: str | None = None) -> str:
    """The runtime to use: the one asked for, else simulated under --simulate, docker when the docker package
    imports and the daemon answers, else none."""
    if requested:
        return requested
    if simulate:
        return "simulated"
    from agents.runtime.docker_runtime import docker_answers

    return "docker" if docker_answers(docker_url) else "none"


def make_runtime(kind: str, state_dir: str, **options: Any) -> Runtime | None:
    """The runtime of that kind (None for "none"); RuntimeUnavailable when it cannot work on this host.

    options: docker_url, publish_address, simulate, volumes_dir, owner (docker: the server's id, labelled on its
    containers so that agents sharing a daemon never touch each other's); ssh_port (host); anything else is
    ignored."""
    if kind == "none":
        return None
    if kind == "simulated":
        from agents.runtime.simulated import SimulatedRuntime

        return SimulatedRuntime(state_file=os.path.join(state_dir, "simulated-workloads.json"))
    if kind == "docker":
        from agents.runtime.docker_runtime import DockerRuntime

        return DockerRuntime(
            state_dir,
            options.get("docker_url"),
            publish_address=options.get("publish_address") or "0.0.0.0",  # noqa: S104 - see DockerRuntime
            simulate=bool(options.get("simulate")),
            volumes_dir=options.get("volumes_dir") or None,
            owner=options.get("owner") or None,
        )
    if kind == "host":
        from agents.runtime.host import HostRuntime

        return HostRuntime(state_dir, ssh_port=int(options.get("ssh_port") or 22))
    raise RuntimeUnavailable(f"unknown runtime {kind!r}: one of {', '.join(KINDS)}")


__all__ = ["KINDS", "Runtime", "RuntimeUnavailable", "choose_kind", "make_runtime"]
