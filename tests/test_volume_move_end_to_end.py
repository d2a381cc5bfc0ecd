"""A volume's move for real (issue 16): the platform (live server), two real agents (`python -m agents ... run`, two
simulated 8-card hosts with the Docker runtime), this session's own dockerd and real loop-mounted ext4 volumes.
A customer writes a file into a volume on server A from a lease there, ends the lease, moves the volume to server B
with consent (the API shows its progress), and reads the file from a lease on B; A's agent destroys its old copy
and reports it wiped, and A's volume disk is free again."""

from __future__ import annotations

import subprocess
from decimal import Decimal

import pytest

from inventory.models import Server
from tests.conftest import register_server
from tests.containers import free_port, require, ssh_run
from tests.factories import GpuModelFactory
from tests.test_volumes_end_to_end import _lease_with, _mounts_under, _ssh_port, _volume
from tests.test_workloads_end_to_end import AgentProcess, _containers, _customer, _list, wait_for
from workloads import volumes
from workloads.models import VolumeMove

pytestmark = pytest.mark.django_db(transaction=True)


def _server(bob, model, name: str, start: int) -> dict:
    return register_server(
        bob,
        model,
        name=name,
        gpu_count=8,
        cpu_cores=16,
        ram_gb=64,
        disk_gb=800,
        runtime="docker",
        public_host="127.0.0.1",
        port_range_start=start,
        port_range_end=start + 49,
        volume_disk_gb=4,
    )


@pytest.mark.containers
def test_a_volume_moved_to_another_server_keeps_its_files_and_its_old_copy_is_wiped(
    live_server, bob, dockerd, ssh_image, tmp_path, settings
):
    require("mkfs.ext4", "mount", "umount", purpose="loop-mounted volumes")
    settings.SUANLI_TRANSFER_DIR = tmp_path / "transfers"
    model = GpuModelFactory(slug="mv-h100", name="Move H100", nvml_names=["NVIDIA H100 80GB HBM3"])
    start = min(max(free_port() // 100 * 100, 20000), 60000)
    servers = [_server(bob, model, "move-a", start), _server(bob, model, "move-b", start + 50)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    agents = []
    for index, created in enumerate(servers):
        dirs[index].mkdir()
        agents.append(
            AgentProcess(
                dirs[index],
                live_server.url,
                created["enrollment_token"],
                "--runtime",
                "docker",
                "--docker-url",
                dockerd.url,
                seed=f"move-{index}",
            )
        )
    offers = [
        _list(created["id"], storage_gb_month_price=Decimal(price))
        for created, price in zip(servers, ("0.10", "0.20"), strict=True)
    ]
    alice, keys, key_id = _customer("Alice Labs", tmp_path)
    volumes_dirs = [d / "volumes" for d in dirs]
    a, b = agents
    try:
        # Both agents drive this session's one dockerd all along: each sees only the containers labelled with its
        # own server, so neither removes the other's.
        a.start("--publish-address", "127.0.0.1", "--stop-grace", "1", "--volumes-dir", str(volumes_dirs[0]))
        b.start("--publish-address", "127.0.0.1", "--stop-grace", "1", "--volumes-dir", str(volumes_dirs[1]))
        made = alice.api.post(
            "/api/v1/volumes/", {"name": "data", "server": servers[0]["id"], "size_gb": 1}, format="json"
        )
        assert made.status_code == 201, made.content
        vid = made.json()["id"]
        wait_for(lambda: _volume(alice, vid)["state"] == "ready", a, what="the volume made on A")

        first = _lease_with(alice, key_id, offers[0], ssh_image, vid)
        port = _ssh_port(alice, first["id"], a)
        wrote = ssh_run(
            port,
            keys.private,
            "mkdir -p /data/sub && echo 'written on A' > /data/sub/notes.txt && "
            "dd if=/dev/urandom of=/data/blob bs=1024 count=3000 2>/dev/null && md5sum /data/blob && "
            "ln -s sub/notes.txt /data/link && sync",
            timeout=60,
        )
        assert wrote.returncode == 0, wrote.stderr
        blob_md5 = wrote.stdout.split()[0]
        # A live lease mounts it: no move.
        refused = alice.api.post(
            f"/api/v1/volumes/{vid}/move/", {"server": servers[1]["id"], "consent": True}, format="json"
        )
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "volume_in_use"
        assert alice.api.post(f"/api/v1/leases/{first['id']}/end/").status_code == 200
        wait_for(lambda: not _containers(dockerd, first["id"]), a, what="lease 1's container removed")

        asked = alice.api.post(
            f"/api/v1/volumes/{vid}/move/", {"server": servers[1]["id"], "consent": True}, format="json"
        )
        assert asked.status_code == 202, asked.content
        move_id = asked.json()["id"]
        seen: list[dict] = []

        def switched() -> bool:
            shown = _volume(alice, vid)
            if shown["move"] is not None:
                seen.append(shown["move"])
            return shown["server"] == servers[1]["id"]

        wait_for(switched, b, timeout=180, what="the volume switched to B")
        assert seen and all(m["target_server"] == servers[1]["id"] for m in seen)
        assert all(0 <= m["bytes_done"] <= m["bytes_total"] for m in seen)
        move = VolumeMove.objects.get(pk=move_id)
        assert move.state == "done" and move.bytes_done == move.bytes_total > 3000 * 1024
        assert _volume(alice, vid)["price_per_gb_month"] == "0.2000"
        assert not (tmp_path / "transfers" / str(move_id)).exists()

        # A's agent wipes its old copy and reports it; A's volume disk is free again.
        wait_for(lambda: VolumeMove.objects.get(pk=move_id).source_wiped_at is not None, a, what="A's old copy wiped")
        assert not (volumes_dirs[0] / f"{vid}.img").exists() and not (volumes_dirs[0] / str(vid)).exists()
        assert volumes.storage_taken(Server.objects.get(pk=servers[0]["id"])) == 0
        assert (volumes_dirs[1] / f"{vid}.img").exists()

        second = _lease_with(alice, key_id, offers[1], ssh_image, vid)
        port = _ssh_port(alice, second["id"], b)
        read = ssh_run(port, keys.private, "cat /data/link; md5sum /data/blob", timeout=60)
        assert read.returncode == 0, read.stderr
        lines = read.stdout.strip().splitlines()
        assert lines[0] == "written on A" and lines[1].split()[0] == blob_md5
    finally:
        for agent in agents:
            agent.stop()
        dockerd.remove_all_containers()
        for volumes_dir in volumes_dirs:
            for point in _mounts_under(volumes_dir):
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
