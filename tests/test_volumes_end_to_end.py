"""Volumes for real (issue 16): the platform (live server), the real agent (`python -m agents ... run` on a
simulated 8-card host with the Docker runtime), this session's own dockerd and a real loop-mounted ext4 volume. A
customer makes a volume on the server, rents cards with it mounted at /data, writes a file over SSH, ends the lease,
rents again on the same server with the same volume and reads the file back; then deletes the volume, and the agent
destroys its image and reports it wiped. And when the money runs out: the lease is stopped, the volume is kept in
grace, a no-GPU data-access session reaches its file over real SSH, and after the grace period (time-travelled) the
session is ended, the volume wiped and the notices sent."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from billing import funds, ledger
from inventory.models import Offer
from scheduler.models import Lease
from tests.billing.test_balances import credit, prepaid
from tests.conftest import register_server
from tests.containers import free_port, require, ssh_run
from tests.factories import GpuModelFactory
from tests.test_workloads_end_to_end import AgentProcess, _containers, _customer, _list, _running, wait_for
from workloads import volumes as workload_volumes
from workloads.models import Workload

pytestmark = pytest.mark.django_db(transaction=True)


def _server(bob, volume_disk_gb: int) -> dict:
    """A docker-runtime server that lends `volume_disk_gb` for volumes, on a port range free on this machine."""
    model = GpuModelFactory(slug="vol-h100", name="Vol H100", nvml_names=["NVIDIA H100 80GB HBM3"])
    start = min(max(free_port() // 100 * 100, 20000), 60000)
    return register_server(
        bob,
        model,
        name="vol-docker",
        gpu_count=8,
        cpu_cores=16,
        ram_gb=64,
        disk_gb=800,
        runtime="docker",
        public_host="127.0.0.1",
        port_range_start=start,
        port_range_end=start + 99,
        volume_disk_gb=volume_disk_gb,
    )


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p.startswith(str(root) + "/")]


def _volume(persona, volume_id: int) -> dict:
    response = persona.api.get(f"/api/v1/volumes/{volume_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def _lease_with(persona, key_id: int, offer: Offer, image: str, volume_id: int) -> dict:
    body = {
        "plan": "card_hour",
        "gpu_count": 1,
        "offer": offer.pk,
        "workload": {
            "ssh_keys": [key_id],
            "image": image,
            "ports": [22],
            "volumes": [{"volume": volume_id, "path": "/data"}],
        },
    }
    response = persona.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _ssh_port(persona, lease_id: int, agent: AgentProcess) -> int:
    running = wait_for(lambda: _running(persona, lease_id), agent, what=f"lease {lease_id}'s workload running")
    return next(c for c in running["connect"] if c["kind"] == "ssh")["port"]


@pytest.mark.containers
def test_a_volume_keeps_its_files_from_one_lease_to_the_next_and_is_destroyed_when_deleted(
    live_server, bob, dockerd, ssh_image, tmp_path
):
    require("mkfs.ext4", "mount", "umount", purpose="loop-mounted volumes")
    created = _server(bob, volume_disk_gb=4)
    volumes_dir = tmp_path / "volumes"
    agent = AgentProcess(
        tmp_path, live_server.url, created["enrollment_token"], "--runtime", "docker", "--docker-url", dockerd.url
    )
    offer = _list(created["id"], storage_gb_month_price=Decimal("0.10"))
    alice, keys, key_id = _customer("Alice Labs", tmp_path)
    agent.start("--publish-address", "127.0.0.1", "--stop-grace", "1", "--volumes-dir", str(volumes_dir))
    try:
        made = alice.api.post(
            "/api/v1/volumes/", {"name": "data", "server": created["id"], "size_gb": 1}, format="json"
        )
        assert made.status_code == 201, made.content
        volume = made.json()
        assert volume["state"] == "creating"
        wait_for(lambda: _volume(alice, volume["id"])["state"] == "ready", agent, what="the volume made")
        image = volumes_dir / f"{volume['id']}.img"
        assert image.stat().st_size == 2**30 and os.path.ismount(volumes_dir / str(volume["id"]))

        first = _lease_with(alice, key_id, offer, ssh_image, volume["id"])
        port = _ssh_port(alice, first["id"], agent)
        wrote = ssh_run(port, keys.private, "echo 'from lease one' > /data/notes.txt && sync", timeout=60)
        assert wrote.returncode == 0, wrote.stderr
        assert _volume(alice, volume["id"])["state"] == "in_use"
        # Deleting a mounted volume is refused.
        refused = alice.api.delete(f"/api/v1/volumes/{volume['id']}/")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "volume_in_use"

        assert alice.api.post(f"/api/v1/leases/{first['id']}/end/").status_code == 200
        wait_for(lambda: not _containers(dockerd, first["id"]), agent, what="lease 1's container removed")
        assert _volume(alice, volume["id"])["state"] == "ready"
        assert image.exists()

        second = _lease_with(alice, key_id, offer, ssh_image, volume["id"])
        port = _ssh_port(alice, second["id"], agent)
        read = ssh_run(
            port, keys.private, "cat /data/notes.txt; dd if=/dev/zero of=/data/8m bs=1048576 count=8", timeout=60
        )
        assert read.returncode == 0, read.stderr
        assert read.stdout.strip() == "from lease one"
        wait_for(
            lambda: Decimal(str(_volume(alice, volume["id"])["used_gb"])) >= Decimal("0.007"),
            agent,
            what="the volume's usage reported",
        )

        assert alice.api.post(f"/api/v1/leases/{second['id']}/end/").status_code == 200
        wait_for(lambda: not _containers(dockerd, second["id"]), agent, what="lease 2's container removed")
        deleted = alice.api.delete(f"/api/v1/volumes/{volume['id']}/")
        assert deleted.status_code == 202, deleted.content
        wait_for(lambda: _volume(alice, volume["id"])["state"] == "wiped", agent, what="the volume reported wiped")
        assert not image.exists() and not (volumes_dir / str(volume["id"])).exists()
        assert not list(volumes_dir.iterdir())
    finally:
        agent.stop()
        dockerd.remove_all_containers()
        for point in _mounts_under(volumes_dir):  # what a failing test left mounted
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _session(persona, session_id: int) -> dict:
    response = persona.api.get(f"/api/v1/data-access/{session_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def _named(dockerd, name: str) -> list[str]:
    return dockerd.run("ps", "-aq", "--filter", f"name=^{name}$").stdout.split()


@pytest.mark.containers
def test_out_of_money_the_volume_is_kept_reachable_without_cards_and_wiped_after_the_grace_period(
    live_server, bob, dockerd, ssh_image, tmp_path, settings
):
    require("mkfs.ext4", "mount", "umount", purpose="loop-mounted volumes")
    settings.SUANLI_DATA_ACCESS_IMAGE = ssh_image
    settings.SUANLI_FUNDS_NOTICE_SECONDS = 0  # stopped on the funds job's next run after its notice
    created = _server(bob, volume_disk_gb=4)
    volumes_dir = tmp_path / "volumes"
    agent = AgentProcess(
        tmp_path, live_server.url, created["enrollment_token"], "--runtime", "docker", "--docker-url", dockerd.url
    )
    offer = _list(created["id"], storage_gb_month_price=Decimal("0.10"))
    alice, keys, key_id = _customer("Alice Labs", tmp_path)
    prepaid(alice.org)
    credit(alice.org, "50.00", "W1")
    agent.start("--publish-address", "127.0.0.1", "--stop-grace", "1", "--volumes-dir", str(volumes_dir))
    try:
        made = alice.api.post(
            "/api/v1/volumes/", {"name": "data", "server": created["id"], "size_gb": 1}, format="json"
        )
        assert made.status_code == 201, made.content
        volume = made.json()
        wait_for(lambda: _volume(alice, volume["id"])["state"] == "ready", agent, what="the volume made")
        image = volumes_dir / f"{volume['id']}.img"
        lease = _lease_with(alice, key_id, offer, ssh_image, volume["id"])
        port = _ssh_port(alice, lease["id"], agent)
        wrote = ssh_run(port, keys.private, "echo 'kept through grace' > /data/notes.txt && sync", timeout=60)
        assert wrote.returncode == 0, wrote.stderr

        # The money runs out: told, then stopped; the lease ends, the volume is kept for a grace period.
        ledger.adjustment_record(org=alice.org, amount=Decimal("-50.00"), currency=alice.org.currency, reason="bounced")
        assert funds.funds_check()["notified"] == 1
        assert funds.funds_check()["stopped"] == 1
        ended = Lease.objects.get(pk=lease["id"])
        assert (ended.state, ended.end_reason) == ("ended", "funds_exhausted")
        wait_for(lambda: not _containers(dockerd, lease["id"]), agent, what="the lease's container removed")
        kept = _volume(alice, volume["id"])
        assert kept["state"] == "grace" and kept["wipe_at"] is not None and image.exists()
        assert any("wiped unless you top up" in m.subject for m in mail.outbox)

        # No cards, no money: a data-access session still opens on the volume, and real ssh reads the file.
        opened = alice.api.post(
            "/api/v1/data-access/",
            {"server": created["id"], "volumes": [volume["id"]], "ssh_keys": [key_id]},
            format="json",
        )
        assert opened.status_code == 201, opened.content
        session = opened.json()
        running = wait_for(
            lambda: (s := _session(alice, session["id"]))["state"] == "running" and s["connect"] and s,
            agent,
            what="the data-access session running",
        )
        assert running["connect"]["kind"] == "ssh" and running["connect"]["user"] == "root"
        assert running["connect"]["command"] == f"ssh -p {running['connect']['port']} root@127.0.0.1"
        container = f"suanli-workload-{Workload.objects.get(data_access_id=session['id']).pk}"
        assert _named(dockerd, container)
        read = ssh_run(
            running["connect"]["port"], keys.private, "cat /data/data/notes.txt; echo gpus=$NVIDIA_VISIBLE_DEVICES",
            timeout=60,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert read.stdout.split() == ["kept", "through", "grace", "gpus="]

        # The grace period runs out (time-travelled): reminders, then the session is ended and the volume wiped.
        wipe_at = datetime.fromisoformat(kept["wipe_at"].replace("Z", "+00:00"))
        with time_machine.travel(wipe_at - timedelta(hours=12), tick=False):
            assert funds.funds_check()["volume_reminders"] == 1
        with time_machine.travel(wipe_at + timedelta(minutes=1), tick=False):
            assert workload_volumes.wipe_volumes() == {"wiping": 1}
        gone = _session(alice, session["id"])
        assert gone["state"] == "ended" and gone["end_reason"] == "wiped" and gone["connect"] is None
        subjects = [m.subject for m in mail.outbox]
        assert any("wiped in 1 day" in s for s in subjects) and any("being wiped" in s for s in subjects)
        wait_for(lambda: not _named(dockerd, container), agent, what="the session's container removed")
        wait_for(lambda: _volume(alice, volume["id"])["state"] == "wiped", agent, what="the volume reported wiped")
        assert not image.exists() and not (volumes_dir / str(volume["id"])).exists()
        assert timezone.now() < wipe_at  # the travel is over: the platform's clock is back
    finally:
        agent.stop()
        dockerd.remove_all_containers()
        for point in _mounts_under(volumes_dir):  # what a failing test left mounted
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
