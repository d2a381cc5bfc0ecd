"""The Docker daemon as the Docker runtime meets it: importing the `docker` package, finding and probing the daemon
(`docker_answers`, `probe`, `detect_nvidia`), reading its errors, and the facts about the host it needs (boot time,
Docker's timestamps). Nothing here creates a container."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from typing import Any

from agents.runtime.base import RuntimeUnavailable

DEFAULT_URL = "unix:///var/run/docker.sock"


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


def explain(exc: Any) -> str:
    return str(getattr(exc, "explanation", None) or exc)[:500]


def storage_refused(exc: Any) -> bool:
    text = explain(exc).lower()
    return "storage" in text or "storage-opt" in text or "quota" in text


def port_taken(exc: Any) -> bool:
    text = explain(exc).lower()
    return "port is already allocated" in text or "address already in use" in text


def boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def parse_docker_time(value: Any) -> float | None:
    """Docker's RFC 3339 time with nanoseconds ("2026-12-07T15:00:00.123456789Z"); None for its zero time."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(value[:19] + "+00:00").timestamp()
    except ValueError:
        return None
