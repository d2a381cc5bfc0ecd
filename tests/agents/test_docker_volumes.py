"""Volumes in real containers: this session's own dockerd (tests/containers.py), its busybox SSH image, and real
loop-mounted volumes (agents/runtime/volumes.py, with a "GB" of 1 MiB so filling one is quick). The real reconciler
drives the Docker runtime with desired states shaped as the platform sends them: a container gets its volume at its
path, read-write; a write past the volume's size fails inside the container; the data outlives the container and the
next lease's container reads it; a wipe waits for the container to go, then destroys the image."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from agents.runtime.docker_runtime import DockerRuntime
from agents.runtime.volumes import VolumeStore
from agents.workloads import Reconciler
from tests.agents.fakes import DesiredSource, desired_state, desired_workload
from tests.containers import require

docker = pytest.importorskip("docker")

MIB = 2**20
PORTS = (41100, 41149)


def desired(version: int, *workloads: dict, volumes=(), wipe=()) -> dict:
    body = desired_state(version, *workloads, port_range=PORTS)
    body["volumes"] = [{"id": v, "size_gb": 64} for v in volumes]
    body["volumes_to_wipe"] = list(wipe)
    return body


def workload(wid: int, image: str, volume: int) -> dict:
    return desired_workload(wid, lease=wid + 500, image=image, volumes=[{"id": volume, "path": "/data", "size_gb": 64}])


@pytest.fixture
def volumes_dir(tmp_path):
    require("mkfs.ext4", "mount", "umount", purpose="loop-mounted volumes")
    root = tmp_path / "volumes"
    yield root
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh if line.split()[4].startswith(str(root) + "/")]
    for point in points:
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


@pytest.fixture
def client(dockerd):
    c = docker.DockerClient(base_url=dockerd.url)
    yield c
    dockerd.remove_all_containers()
    c.close()


def settle(rec: Reconciler, until, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec.tick()
        statuses = {w.id: w for w in rec.snapshot().workloads}
        if until(statuses):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last: {statuses}, volumes {rec.volumes.statuses()}")
        time.sleep(0.1)


def sh(client, wid: int, script: str):
    return client.containers.get(f"suanli-workload-{wid}").exec_run(["sh", "-c", script])


def test_a_volume_is_mounted_read_write_holds_its_size_outlives_the_container_and_is_wiped(
    dockerd, ssh_image, client, volumes_dir, tmp_path
):
    state_dir = str(tmp_path / "state")
    store = VolumeStore(str(volumes_dir), unit=MIB)
    runtime = DockerRuntime(state_dir, dockerd.url, publish_address="127.0.0.1", volumes=store)
    source = DesiredSource(desired(1, workload(31, ssh_image, 7), volumes=[7]))
    rec = Reconciler(source, runtime, state_dir, poll=0.1, grace=1)
    settle(rec, lambda s: 31 in s and s[31].state == "running")

    c = client.containers.get("suanli-workload-31")
    assert c.labels["suanli.volumes"] == "7"
    (mount,) = [m for m in c.attrs["Mounts"] if m["Destination"] == "/data"]
    assert (mount["Source"], mount["RW"]) == (str(volumes_dir / "7"), True)
    wrote = sh(client, 31, "echo kept > /data/file && cat /data/file")
    assert wrote.exit_code == 0 and wrote.output.decode().strip() == "kept"
    assert (volumes_dir / "7" / "file").read_text() == "kept\n"
    full = sh(client, 31, "dd if=/dev/zero of=/data/big bs=1048576 count=80")
    assert full.exit_code != 0 and "No space left on device" in full.output.decode()
    assert (volumes_dir / "7.img").stat().st_blocks * 512 <= 64 * MIB
    (entry,) = rec.report_fields()["volumes"]
    assert entry["id"] == 7 and entry["state"] == "ready" and entry["used_gb"] > 50 / 1024

    # Lease 1 ends; lease 2 on the same server mounts the same volume and reads what lease 1 wrote.
    source.payload = desired(2, workload(32, ssh_image, 7), volumes=[7])
    settle(rec, lambda s: 32 in s and s[32].state == "running" and 31 not in {c for c in s if s[c].state != "cleaned"})
    assert not [x for x in client.containers.list(all=True) if x.name == "suanli-workload-31"]
    read = sh(client, 32, "cat /data/file; rm /data/big")
    assert read.output.decode().strip() == "kept"

    # The volume is deleted with lease 2 ending: the container goes first, then the image.
    source.payload = desired(3, wipe=[7])
    # The engine's bare list: containers.list() inspects each listed container, which fails if it goes meanwhile.
    settle(rec, lambda s: not client.api.containers(all=True) and store.statuses()[7].state == "wiped")
    assert not (volumes_dir / "7.img").exists() and not (volumes_dir / "7").exists()
    assert rec.report_fields()["volumes"] == [{"id": 7, "state": "wiped", "used_gb": 0.0, "message": ""}]
    assert not os.path.ismount(volumes_dir / "7")
