"""Volumes for real (issue 16): the platform (live server), the real agent (`python -m agents ... run` on a
simulated 8-card host with the Docker runtime), this session's own dockerd and a real loop-mounted ext4 volume. A
customer makes a volume on the server, rents cards with it mounted at /data, writes a file over SSH, ends the lease,
rents again on the same server with the same volume and reads the file back; then deletes the volume, and the agent
destroys its image and reports it wiped."""

from __future__ import annotations

import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from inventory.models import Offer
from tests.conftest import register_server
from tests.containers import free_port, require, ssh_run
from tests.factories import GpuModelFactory
from tests.test_workloads_end_to_end import AgentProcess, _containers, _customer, _list, _running, wait_for

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
