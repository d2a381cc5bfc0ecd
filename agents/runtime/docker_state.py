"""How the Docker runtime reads its workloads' states: a container's attributes mapped to an `Observed` (running,
starting, stopping, exited with its reason), then overlaid with the failures it recorded and the operations in
flight, as `DockerRuntime.observe` reports them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agents.runtime.base import EXITED, FAILED, RUNNING, STARTING, STOPPING, Observed, Operation
from agents.runtime.docker_spec import (
    HELD,
    LABEL_GENERATION,
    LABEL_LEASE,
    LABEL_SPEC,
    LABEL_VOLUMES,
    bound_ports,
    int_or_none,
)


@dataclass(frozen=True)
class Failure:
    spec_hash: str
    generation: int
    lease: int
    gpus: tuple[str, ...]
    message: str
    at: float


def observed(workload_id: int, container: Any, note: str, workload_dir: str) -> Observed:
    """What a container of ours says of its workload; `note` is the message kept with a running one."""
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
        if os.path.exists(os.path.join(workload_dir, HELD)):
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
        lease=int_or_none(labels.get(LABEL_LEASE)),
        spec_hash=labels.get(LABEL_SPEC, ""),
        generation=int_or_none(labels.get(LABEL_GENERATION)) or 0,
        ports=bound_ports(attrs),
        message=message,
        exit_code=exit_code,
        gpus=env_gpus(attrs),
        volumes=tuple(int(v) for v in str(labels.get(LABEL_VOLUMES) or "").split(",") if v.isdigit()),
    )


def add_failures(found: dict[int, Observed], failures: dict[int, Failure]) -> None:
    """A recorded failure shows as `failed` unless its workload's container runs."""
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
                volumes=before.volumes if before else (),
            )


def add_operations(found: dict[int, Observed], ops: dict[int, Operation]) -> None:
    """An operation in flight shows its state and progress, busy."""
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
            volumes=before.volumes if before else (tuple(v.id for v in spec.volumes) if spec else ()),
        )


def env_gpus(attrs: dict[str, Any]) -> tuple[str, ...]:
    for item in (attrs.get("Config") or {}).get("Env") or []:
        if item.startswith("NVIDIA_VISIBLE_DEVICES="):
            value = item.split("=", 1)[1]
            return tuple(g for g in value.split(",") if g)
    return ()
