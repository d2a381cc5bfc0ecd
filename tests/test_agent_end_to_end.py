"""The whole loop: a `--simulate 8` agent enrols with a live platform, reports, a fault is injected into it,
and the card turns failed and is drained on the platform."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inventory.models import Gpu, GpuHealthEvent, Server
from tests.conftest import register_server
from tests.factories import GpuModelFactory

REPO = Path(__file__).resolve().parent.parent


def agent(tmp_path: Path, *args: str) -> list[str]:
    common = ["--config", str(tmp_path / "agent.json"), "--spool-dir", str(tmp_path / "spool")]
    return [sys.executable, "-m", "agents", *common, "--simulate", "8", "--model", "h100", "--seed", "e2e", *args]


def wait_for(condition, proc=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the agent exited early: {proc.communicate()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.django_db(transaction=True)
def test_a_simulated_agent_enrols_reports_and_a_fault_drains_the_card(live_server, bob, tmp_path):
    model = GpuModelFactory(slug="e2e-h100", name="E2E H100", nvml_names=["NVIDIA H100 80GB HBM3"])
    created = register_server(bob, model, name="e2e-box", gpu_count=8, cpu_cores=96, ram_gb=1024, disk_gb=8000)
    token, server_id = created["enrollment_token"], created["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO")}

    enrolled = subprocess.run(
        agent(tmp_path, "enroll", "--url", live_server.url, "--token", token),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert oct((tmp_path / "agent.json").stat().st_mode & 0o777) == "0o600"
    assert Gpu.objects.filter(server_id=server_id).count() == 8

    faults = tmp_path / "faults.jsonl"
    faults.touch()
    proc = subprocess.Popen(
        agent(tmp_path, "--fault-file", str(faults), "run", "--interval", "0.5"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: Gpu.objects.filter(server_id=server_id, last_sample_at__isnull=False).count() == 8, proc)
        assert not Gpu.objects.filter(server_id=server_id).exclude(health="healthy").exists()
        first_seq = Server.objects.get(pk=server_id).last_seq

        faults.write_text(json.dumps({"fault": "xid:79@3"}) + "\n")
        wait_for(lambda: Gpu.objects.get(server_id=server_id, index=3).health == "failed", proc)
        assert Server.objects.get(pk=server_id).last_seq > first_seq
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err

    failed = Gpu.objects.get(server_id=server_id, index=3)
    assert failed.drained and "XID 79" in failed.health_reason
    assert Gpu.objects.filter(server_id=server_id, health="healthy").count() == 7
    assert GpuHealthEvent.objects.filter(gpu=failed, to_health="failed").count() == 1
    detail = bob.api.get(f"/api/v1/servers/{server_id}/").json()
    assert [g["health"] for g in detail["gpus"]].count("failed") == 1
