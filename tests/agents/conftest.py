"""Fixtures for the agent tests. None of them needs Django or a database; the agent tests also run alone with
`pytest tests/agents -p no:django --confcutdir=tests/agents` (which skips the project's Django conftest). The
real-container fixtures (tests/containers.py: dockerd, ssh_image, sshd, ...) come from the project's conftest, or,
run alone, are loaded here."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.agents.fakes import FakeClock, FakePlatform

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("tests.containers"):  # run alone, without tests/conftest.py
        config.pluginmanager.import_plugin("tests.containers")


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    p = FakePlatform()
    yield p
    p.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent_env(tmp_path) -> dict[str, str]:
    """The environment for running `python -m agents` in a subprocess, with paths inside tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_AGENT")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["SUANLI_AGENT_CONFIG"] = str(tmp_path / "agent.json")
    env["SUANLI_AGENT_SPOOL"] = str(tmp_path / "spool")
    return env


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agents", *args]
