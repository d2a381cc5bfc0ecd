"""An image pull for the Docker runtime's create operation: skipped when the image is present, else streamed from the
daemon with the operation's progress (`pulling N%`, from the layers' bytes) and its cancellation checked between
events. A missing or private image, or an unreachable registry, raises `PullFailed` with the reason."""

from __future__ import annotations

from typing import Any

from agents.runtime.base import PULLING, Operation
from agents.runtime.docker_daemon import explain

DONE = ("Download complete", "Pull complete", "Already exists", "Verifying Checksum")


class Cancelled(Exception):
    pass


class PullFailed(Exception):
    pass


def cancel_point(op: Operation) -> None:
    if op.cancelled.is_set():
        raise Cancelled()


def pull(docker: Any, op: Operation, client: Any, image: str) -> None:
    errors = docker.errors
    try:
        client.images.get(image)
        return  # present: never pulled again
    except errors.ImageNotFound:
        pass
    repository, tag = docker.utils.parse_repository_tag(image)
    op.state, op.progress, op.message = PULLING, 0, "pulling 0%"
    layers: dict[str, tuple[int, int]] = {}  # layer id -> (bytes done, bytes in all)
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            cancel_point(op)
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                raise PullFailed(f"cannot pull {image}: {str(event['error'])[:400]}")
            layer, status = event.get("id"), str(event.get("status", ""))
            if not layer:
                continue
            current, total = layers.get(layer, (0, 0))
            detail = event.get("progressDetail") or {}
            if status == "Downloading" and detail.get("total"):
                current, total = int(detail.get("current", 0)), int(detail["total"])
            elif status in DONE:
                current = total
            layers[layer] = (current, total)
            total_bytes = sum(t for _, t in layers.values())
            if total_bytes:
                progress = min(99, int(100 * sum(c for c, _ in layers.values()) / total_bytes))
                op.progress, op.message = progress, f"pulling {progress}%"
        client.images.get(image)
    except (errors.APIError, errors.ImageNotFound) as exc:  # a missing or private image, an unreachable registry
        raise PullFailed(f"cannot pull {image}: {explain(exc)}") from None
    op.progress = 100
