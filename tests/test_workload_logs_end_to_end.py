"""A workload's output for real: the platform (live server), the real agent (`python -m agents ... run`, a simulated
8-card host, Docker runtime on this session's dockerd, `--logs-every 1`) and the real `suanli` command. A customer
rents a container that prints, and reads its output with `suanli logs`; what it prints later arrives too; another
tenant reads nothing of it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_workloads_end_to_end import AgentProcess, _customer, _lease, _list, _provider_server, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _suanli(url: str, home, persona, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "SUANLI_CONFIG_DIR": str(home / "config"),
        "SUANLI_API_URL": url,
        "LANG": "C.UTF-8",
    }
    from tests.cli.conftest import REPO

    env["PYTHONPATH"] = str(REPO)
    login = subprocess.run(
        [sys.executable, "-m", "cli", "login", "--api-key", "-", "--org", str(persona.org.pk)],
        input=persona.token + "\n",
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=home, capture_output=True, text=True, timeout=60
    )


@pytest.mark.containers
def test_a_containers_output_reaches_its_customer_through_suanli_logs(live_server, bob, dockerd, ssh_image, tmp_path):
    created = _provider_server(bob, runtime="docker")
    agent = AgentProcess(
        tmp_path, live_server.url, created["enrollment_token"], "--runtime", "docker", "--docker-url", dockerd.url
    )
    offer = _list(created["id"])
    alice, _keys, key_id = _customer("Alice Labs", tmp_path)
    carol, _carol_keys, _carol_key_id = _customer("Carol AI", tmp_path)
    agent.start("--publish-address", "127.0.0.1", "--stop-grace", "1", "--logs-every", "1")
    try:
        script = "echo 'training started'; echo 'cuda: 2 devices' >&2; sleep 4; echo 'epoch 1 loss 0.42'; sleep 600"
        lease = _lease(alice, key_id, offer, image=ssh_image, ports=[], command=["sh", "-c", script])
        wid = lease["workloads"][0]["id"] if lease.get("workloads") else None

        def output() -> str:
            nonlocal wid
            if wid is None:
                workloads = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["workloads"]
                wid = workloads[0]["id"] if workloads else None
                if wid is None:
                    return ""
            return alice.api.get(f"/api/v1/leases/{lease['id']}/workloads/{wid}/logs/").json()["text"]

        wait_for(lambda: "training started" in output(), agent, what="the first output")
        home = tmp_path / "alice-cli"
        home.mkdir()
        shown = _suanli(live_server.url, home, alice, "logs", str(lease["id"]))
        assert shown.returncode == 0, shown.stderr
        assert "training started\n" in shown.stdout and "cuda: 2 devices\n" in shown.stdout
        wait_for(lambda: output().endswith("epoch 1 loss 0.42\n"), agent, what="the later output")
        last = _suanli(live_server.url, home, alice, "logs", str(lease["id"]), "--tail", "1")
        assert last.stdout == "epoch 1 loss 0.42\n", last.stderr

        other = tmp_path / "carol-cli"
        other.mkdir()
        refused = _suanli(live_server.url, other, carol, "logs", str(lease["id"]), "--workload", str(wid))
        assert refused.returncode == 3 and "training" not in refused.stdout + refused.stderr
        alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    finally:
        agent.stop()
        dockerd.remove_all_containers()
