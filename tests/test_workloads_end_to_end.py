"""Workloads for real: the platform (live server), the real agent (`python -m agents ... run`, a simulated 8-card
host) and a real Docker engine or OpenSSH server. A customer adds a key, rents cards with a template, the agent
starts a container on exactly those cards, the customer logs in over SSH through the published port, and at the end
the container is gone and the cards are allocatable again; a second tenant beside it never sees the first one's
files or cards; a failing image fails the lease uncharged; host access makes and removes a lease-only user."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from inventory.models import Gpu, Offer
from scheduler.models import Lease
from tests.conftest import make_persona, register_server
from tests.containers import free_port, make_keypair, ssh_run
from tests.factories import GpuModelFactory, OrganizationFactory

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


class AgentProcess:
    """The real agent CLI on a simulated 8-card host, enrolled with the live platform."""

    def __init__(self, tmp_path: Path, url: str, token: str, *runtime: str, seed: str = "wl-e2e"):
        self.tmp = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO")}
        self.common = [
            "--config",
            str(tmp_path / "agent.json"),
            "--spool-dir",
            str(tmp_path / "spool"),
            "--state-dir",
            str(tmp_path / "state"),
            "--simulate",
            "8",
            "--model",
            "h100",
            "--seed",
            seed,
            *runtime,
        ]
        enrolled = self._cli("enroll", "--url", url, "--token", token)
        assert enrolled.returncode == 0, enrolled.stderr
        self.proc: subprocess.Popen | None = None

    def _cli(self, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "agents", *self.common, *args]
        return subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)

    def start(self, *extra: str) -> None:
        argv = [sys.executable, "-m", "agents", *self.common, "run", "--interval", "1", "--workloads-poll", "0.5"]
        self.log = open(self.tmp / "agent.log", "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*argv, *extra], cwd=REPO, env=self.env, stdout=self.log, stderr=self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def output(self) -> str:
        return (self.tmp / "agent.log").read_text()[-4000:]


def wait_for(condition, agent: AgentProcess, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if agent.proc is not None and agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited early:\n{agent.output()}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; agent log:\n{agent.output()}")


def _provider_server(bob, *, runtime: str, public_host: str = "127.0.0.1", **offer) -> dict:
    model = GpuModelFactory(slug=f"wl-h100-{runtime}", name=f"WL H100 {runtime}", nvml_names=["NVIDIA H100 80GB HBM3"])
    start = free_port() // 100 * 100
    start = min(max(start, 20000), 60000)
    return register_server(
        bob,
        model,
        name=f"wl-{runtime}",
        gpu_count=8,
        cpu_cores=16,
        ram_gb=64,
        disk_gb=800,
        runtime=runtime,
        public_host=public_host,
        port_range_start=start,
        port_range_end=start + 99,
    )


def _list(server_id: int, **fields) -> Offer:
    from marketplace import services as market

    server = Gpu.objects.filter(server_id=server_id).first().server
    prices = {"card_hour": Decimal("2.50"), "server_month": Decimal("9000"), "pflops_year": None}
    return market.offer_create(org=server.organization, server=server, prices=prices, **fields)


def _customer(name: str, tmp: Path):
    persona = make_persona(OrganizationFactory(name=name), email=f"{name.lower().replace(' ', '')}@example.com")
    keys = make_keypair(tmp, name="id_" + name.split()[0].lower())
    added = persona.api.post("/api/v1/ssh-keys/", {"name": "laptop", "public_key": keys.public_text}, format="json")
    assert added.status_code == 201, added.content
    return persona, keys, added.json()["id"]


def _lease(persona, key_id: int, offer: Offer, **workload) -> dict:
    body = {"plan": "card_hour", "gpu_count": 2, "offer": offer.pk, "workload": {"ssh_keys": [key_id], **workload}}
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _workload(persona, lease_id: int) -> dict:
    return persona.api.get(f"/api/v1/leases/{lease_id}/").json()["workloads"][0]


def _running(persona, lease_id: int):
    workload = _workload(persona, lease_id)
    return workload if workload["state"] == "running" and workload["connect"] else None


def _containers(dockerd, lease_id: int) -> list[str]:
    listed = dockerd.run("ps", "-aq", "--filter", f"label=suanli.lease={lease_id}").stdout.split()
    return listed


@pytest.mark.containers
def test_a_rented_container_serves_ssh_on_the_leased_cards_only_and_is_gone_after(
    live_server, bob, dockerd, ssh_image, tmp_path
):
    created = _provider_server(bob, runtime="docker")
    agent = AgentProcess(
        tmp_path, live_server.url, created["enrollment_token"], "--runtime", "docker", "--docker-url", dockerd.url
    )
    offer = _list(created["id"])
    alice, alice_key, alice_key_id = _customer("Alice Labs", tmp_path)
    carol, carol_key, carol_key_id = _customer("Carol AI", tmp_path)
    template = alice.api.post(
        "/api/v1/templates/", {"name": "test ssh", "image": ssh_image, "ports": [22], "min_disk_gb": 1}, format="json"
    )
    assert template.status_code == 201, template.content
    agent.start("--publish-address", "127.0.0.1", "--stop-grace", "2")
    try:
        lease = _lease(alice, alice_key_id, offer, template=template.json()["id"])
        beside = _lease(carol, carol_key_id, offer, image=ssh_image, ports=[22])
        mine = sorted(g["uuid"] for g in lease["gpus"])
        theirs = sorted(g["uuid"] for g in beside["gpus"])
        assert not set(mine) & set(theirs)

        running = wait_for(lambda: _running(alice, lease["id"]), agent, what="alice's workload running")
        ssh = next(c for c in running["connect"] if c["kind"] == "ssh")
        assert ssh["command"] == f"ssh -p {ssh['port']} root@127.0.0.1"
        env = ssh_run(ssh["port"], alice_key.private, "env", timeout=60)
        assert env.returncode == 0, env.stderr
        visible = dict(line.split("=", 1) for line in env.stdout.splitlines() if "=" in line)
        assert sorted(visible["NVIDIA_VISIBLE_DEVICES"].split(",")) == mine
        assert ssh_run(ssh["port"], alice_key.private, "echo secret > /root/alice.txt").returncode == 0
        # The workload is charged from its first running report, not from the allocation.
        assert Lease.objects.get(pk=lease["id"]).workloads.get().started_at is not None

        other = wait_for(lambda: _running(carol, beside["id"]), agent, what="carol's workload running")
        other_ssh = next(c for c in other["connect"] if c["kind"] == "ssh")
        assert other_ssh["port"] != ssh["port"]
        seen = ssh_run(other_ssh["port"], carol_key.private, "cat /root/alice.txt; env")
        assert "secret" not in seen.stdout
        assert (
            f"NVIDIA_VISIBLE_DEVICES={','.join(theirs)}" in seen.stdout
            or sorted(
                next(
                    line.split("=", 1)[1]
                    for line in seen.stdout.splitlines()
                    if line.startswith("NVIDIA_VISIBLE_DEVICES=")
                ).split(",")
            )
            == theirs
        )
        # Keys do not cross: carol's key does not open alice's container.
        refused = ssh_run(ssh["port"], carol_key.private, "true")
        assert refused.returncode != 0

        # The agent killed and started again adopts the running containers: nothing is started twice.
        before = {_containers(dockerd, lease["id"])[0], _containers(dockerd, beside["id"])[0]}
        agent.kill()
        agent.start("--publish-address", "127.0.0.1", "--stop-grace", "2")
        time.sleep(3)
        wait_for(lambda: _running(alice, lease["id"]), agent, what="alice's workload still running")
        after = {_containers(dockerd, lease["id"])[0], _containers(dockerd, beside["id"])[0]}
        assert after == before
        assert ssh_run(ssh["port"], alice_key.private, "cat /root/alice.txt").stdout.strip() == "secret"

        ended = alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
        assert ended.status_code == 200
        wait_for(lambda: not _containers(dockerd, lease["id"]), agent, what="alice's container removed")
        wait_for(
            lambda: not Gpu.objects.filter(uuid__in=mine, needs_cleaning=True).exists(),
            agent,
            what="alice's cards reported clean",
        )
        assert _workload(alice, lease["id"])["state"] in ("cleaned", "stopping")
        # Carol's container is untouched, and alice's cards are allocatable again.
        assert ssh_run(other_ssh["port"], carol_key.private, "true").returncode == 0
        again = _lease(alice, alice_key_id, offer, image=ssh_image, ports=[22])
        assert again["gpus"]
        alice.api.post(f"/api/v1/leases/{again['id']}/end/")
        carol.api.post(f"/api/v1/leases/{beside['id']}/end/")
        wait_for(lambda: not _containers(dockerd, beside["id"]), agent, what="carol's container removed")
    finally:
        agent.stop()
        dockerd.remove_all_containers()


@pytest.mark.containers
def test_a_failing_image_fails_the_lease_and_charges_nothing(live_server, bob, dockerd, failing_image, tmp_path):
    created = _provider_server(bob, runtime="docker")
    agent = AgentProcess(
        tmp_path, live_server.url, created["enrollment_token"], "--runtime", "docker", "--docker-url", dockerd.url
    )
    offer = _list(created["id"])
    alice, _key, key_id = _customer("Alice Labs", tmp_path)
    agent.start("--publish-address", "127.0.0.1")
    try:
        lease = _lease(alice, key_id, offer, image=failing_image, ports=[22])
        wait_for(
            lambda: alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["state"] == "failed",
            agent,
            what="the lease to fail",
        )
        body = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()
        assert body["workloads"][0]["state"] == "failed"
        assert body["workloads"][0]["message"]
        usage = alice.api.get(f"/api/v1/leases/{lease['id']}/usage/").json()
        assert Decimal(usage["amount"]) == 0
        kinds = [e["kind"] for e in alice.api.get(f"/api/v1/leases/{lease['id']}/events/").json()["results"]]
        assert "failed" in kinds
    finally:
        agent.stop()
        dockerd.remove_all_containers()


def test_host_access_makes_a_lease_user_on_the_bare_server_and_removes_it(live_server, bob, sshd, tmp_path):
    created = _provider_server(bob, runtime="host")
    agent = AgentProcess(tmp_path, live_server.url, created["enrollment_token"], "--runtime", "host", seed="wl-host")
    offer = _list(created["id"], host_access=True)
    alice, keys, key_id = _customer("Alice Labs", tmp_path)
    agent.start("--ssh-port", str(sshd), "--stop-grace", "1")
    user = None
    try:
        end_at = "2099-01-01T00:00:00+00:00"
        body = {
            "plan": "server_month",
            "offer": offer.pk,
            "end_at": end_at,
            "workload": {"access": "host", "ssh_keys": [key_id]},
        }
        response = alice.api.post("/api/v1/leases/", body, format="json")
        assert response.status_code == 201, response.content
        lease = response.json()
        user = f"lease{lease['id']}"
        running = wait_for(lambda: _running(alice, lease["id"]), agent, what="host access running")
        ssh = next(c for c in running["connect"] if c["kind"] == "ssh")
        assert ssh["command"] == f"ssh -p {sshd} {user}@127.0.0.1"
        who = ssh_run(
            sshd, keys.private, "id -un; nohup sleep 300 >/dev/null 2>&1 & echo started", user=user, timeout=60
        )
        assert who.returncode == 0, who.stderr
        assert who.stdout.split()[0] == user
        assert pwd.getpwnam(user).pw_dir

        assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200

        def gone() -> bool:
            try:
                pwd.getpwnam(user)
            except KeyError:
                return True
            return False

        wait_for(gone, agent, what="the lease user removed")
        left = subprocess.run(["pgrep", "-u", user], capture_output=True, text=True)
        assert left.stdout.strip() == ""
        assert not Path(f"/home/{user}").exists()
    finally:
        agent.stop()
        if user:
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
            subprocess.run(["userdel", "-r", user], capture_output=True)
