"""The reconciler with volumes (agents/workloads.py, issue 16), on the simulated runtime and its in-memory volumes:
the desired state's volumes are made and wiped, a workload waits for its volumes, no volume is wiped while a
workload of ours mounts it, the reports carry `volumes`, and the spec hash of a workload without volumes is the one
an agent of before volumes computed."""

from __future__ import annotations

import hashlib
import json

import pytest

from agents.client import Backoff
from agents.runtime.base import Desired, VolumeMount, WorkloadSpec
from agents.runtime.simulated import SimulatedRuntime
from agents.runtime.volumes import UnsupportedVolumes
from agents.workloads import Reconciler, read_state
from tests.agents.fakes import DesiredSource, FakeClock, desired_state, desired_workload


def desired(version: int, *workloads: dict, volumes=(), wipe=()) -> dict:
    body = desired_state(version, *workloads)
    body["volumes"] = [{"id": v, "size_gb": 10} for v in volumes]
    body["volumes_to_wipe"] = list(wipe)
    return body


def mounting(wid: int, *volumes: int) -> dict:
    return desired_workload(wid, volumes=[{"id": v, "path": f"/data{v}", "size_gb": 10} for v in volumes])


@pytest.fixture
def runtime(clock: FakeClock) -> SimulatedRuntime:
    return SimulatedRuntime(clock=clock.time)


def reconciler(source, runtime, clock, tmp_path) -> Reconciler:
    return Reconciler(
        source,
        runtime,
        str(tmp_path / "state"),
        poll=1.0,
        grace=1.0,
        wall=clock.time,
        clock=clock.monotonic,
        wait=clock.sleep,
        backoff=Backoff(rng=lambda: 1.0),
    )


def workload_status(rec: Reconciler, wid: int):
    return next(w for w in rec.snapshot().workloads if w.id == wid)


def test_a_workload_runs_with_its_volume_and_the_reports_say_the_volume_is_ready(clock, runtime, tmp_path):
    rec = reconciler(DesiredSource(desired(1, mounting(31, 7), volumes=[7])), runtime, clock, tmp_path)
    rec.run(duration=5)
    assert workload_status(rec, 31).state == "running"
    fields = rec.report_fields()
    assert fields["volumes"] == [{"id": 7, "state": "ready", "used_gb": 0.0, "message": ""}]
    saved = read_state(str(tmp_path / "state"))
    assert saved["volumes"] == [{"id": 7, "state": "ready", "used_gb": 0.0, "message": ""}]


def test_a_workload_waits_pending_for_a_volume_that_is_not_ready(clock, runtime, tmp_path):
    runtime.volumes = UnsupportedVolumes("volumes are not supported here")
    rec = reconciler(DesiredSource(desired(1, mounting(31, 7), volumes=[7])), runtime, clock, tmp_path)
    rec.run(duration=5)
    status = workload_status(rec, 31)
    assert status.state == "pending"
    assert status.message == "waiting for volume 7 (failed: volumes are not supported here)"
    assert runtime.history == []  # never started without its volume
    assert rec.report_fields()["volumes"][0]["state"] == "failed"


def test_a_volume_the_desired_state_does_not_list_keeps_its_workload_waiting(clock, runtime, tmp_path):
    rec = reconciler(DesiredSource(desired(1, mounting(31, 7))), runtime, clock, tmp_path)
    rec.run(duration=5)
    assert workload_status(rec, 31).message == "waiting for volume 7 (not in this server's desired volumes)"
    assert runtime.history == []


def test_a_volume_is_wiped_once_the_workload_that_mounts_it_is_removed(clock, runtime, tmp_path):
    source = DesiredSource(desired(1, mounting(31, 7), volumes=[7]))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=5)
    # The lease ended and the volume was deleted in the same change: the workload goes, then the volume.
    source.payload = desired(2, wipe=[7])
    assert rec.fetch()
    rec.reconcile()
    assert runtime.volumes.statuses()[7].state == "wiping"  # its container is still stopping
    assert "volumes" not in rec.report_fields()
    rec.run(duration=5)
    assert ("remove", 31) in runtime.history
    assert rec.report_fields()["volumes"] == [{"id": 7, "state": "wiped", "used_gb": 0.0, "message": ""}]


def test_the_spec_hash_of_a_workload_without_volumes_is_unchanged_and_volumes_change_it():
    item = desired_workload(31)
    spec = WorkloadSpec.from_dict(item)
    before = {  # the fields an agent of before volumes hashed
        "image": spec.image,
        "command": [],
        "env": {},
        "ports": [22],
        "gpus": [],
        "ssh_keys": [],
        "limits": {"cpus": None, "memory_mb": None, "disk_gb": None},
        "access": "container",
    }
    old = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert spec.spec_hash == old
    with_volume = WorkloadSpec.from_dict(mounting(31, 7))
    assert with_volume.volumes == (VolumeMount(7, "/data7", 10),)
    assert with_volume.spec_hash != old
    elsewhere = WorkloadSpec.from_dict(desired_workload(31, volumes=[{"id": 7, "path": "/other", "size_gb": 10}]))
    assert elsewhere.spec_hash != with_volume.spec_hash


@pytest.mark.parametrize(
    "volumes",
    [
        [{"id": 7, "path": "data"}],
        [{"id": 7, "path": "/"}],
        [{"path": "/data"}],
        [{"id": 7, "path": "/a"}, {"id": 7, "path": "/b"}],
        [{"id": 7, "path": "/a"}, {"id": 8, "path": "/a"}],
    ],
)
def test_a_malformed_volume_mount_is_refused(volumes):
    with pytest.raises(ValueError):
        WorkloadSpec.from_dict(desired_workload(31, volumes=volumes))


def test_the_desired_volumes_are_parsed_and_a_volume_both_wanted_and_to_wipe_is_kept():
    parsed = Desired.from_dict(desired(1, volumes=[7, 8], wipe=[8, 9]))
    assert [(v.id, v.size_gb) for v in parsed.volumes] == [(7, 10), (8, 10)]
    assert parsed.volumes_to_wipe == (9,)
    with pytest.raises(ValueError):
        Desired.from_dict(desired(1) | {"volumes": [{"id": 7, "size_gb": 0}]})
    assert Desired.from_dict(desired_state(1)).volumes == ()


def test_status_lists_the_volumes_the_last_pass_saw(clock, runtime, tmp_path, capsys):
    from agents.cli_status import _print_workloads

    rec = reconciler(DesiredSource(desired(1, mounting(31, 7), volumes=[7])), runtime, clock, tmp_path)
    rec.run(duration=3)
    _print_workloads({"kind": "simulated", "ok": True}, read_state(str(tmp_path / "state")))
    out = capsys.readouterr().out
    assert "volumes:   1" in out and "7: ready, 0.0 GB used" in out


@pytest.mark.parametrize(("volume_owner", "workload_owner", "state"), [("5", "6", "failed"), ("5", "5", "running")])
def test_a_volume_of_another_organisation_is_never_mounted(
    clock, runtime, tmp_path, volume_owner, workload_owner, state
):
    body = desired(1, mounting(31, 7) | {"owner": workload_owner}, volumes=[7])
    body["volumes"][0]["owner"] = volume_owner
    rec = reconciler(DesiredSource(body), runtime, clock, tmp_path)
    rec.run(duration=5)
    status = workload_status(rec, 31)
    assert status.state == state
    if state == "failed":
        assert status.message == "refused: volume 7 belongs to another organisation"
        assert runtime.history == []
