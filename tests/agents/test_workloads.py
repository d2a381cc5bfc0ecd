"""The reconciler (agents/workloads.py) over the simulated runtime, with a fake clock and a fake desired state."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agents.client import Backoff
from agents.runtime.base import Desired, WorkloadSpec
from agents.runtime.simulated import SimulatedRuntime
from agents.workloads import CLEANED_REPORTS, Reconciler, read_state
from tests.agents.fakes import DesiredSource, FakeClock, desired_state, desired_workload


def workload(wid: int, lease: int | None = None, **fields) -> dict:
    defaults = {
        "lease": lease if lease is not None else wid + 100,
        "gpus": [f"GPU-{wid}-a", f"GPU-{wid}-b"],
        "image": "suanli/pytorch:2.4-cuda12.4",
        "env": {"JUPYTER_TOKEN": "t"},
        "ports": [22, 8888],
        "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample alice@laptop"],
        "limits": {"cpus": 28.0, "memory_mb": 262144, "disk_gb": 100},
    }
    return desired_workload(wid, **(defaults | fields))


def desired(version: int, *workloads: dict) -> dict:
    return desired_state(version, *workloads, server=12, public_host="gpu1.example.com")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


@pytest.fixture
def source() -> DesiredSource:
    return DesiredSource()


@pytest.fixture
def runtime(clock: FakeClock, tmp_path) -> SimulatedRuntime:
    return SimulatedRuntime(clock=clock.time, state_file=str(tmp_path / "sim.json"))


def reconciler(source, runtime, clock, tmp_path, **kw) -> Reconciler:
    return Reconciler(
        source,
        runtime,
        str(tmp_path / "state"),
        poll=kw.pop("poll", 3.0),
        grace=kw.pop("grace", 10.0),
        wall=clock.time,
        clock=clock.monotonic,
        wait=clock.sleep,
        backoff=Backoff(rng=lambda: 1.0),
        **kw,
    )


def states(rec: Reconciler) -> dict[int, str]:
    return {w.id: w.state for w in rec.snapshot().workloads}


def status(rec: Reconciler, wid: int):
    return next(w for w in rec.snapshot().workloads if w.id == wid)


# -- starting ----------------------------------------------------------------------------------------------------


def test_a_wanted_workload_goes_pending_pulling_starting_running_on_ports_of_the_range(
    source, runtime, clock, tmp_path
):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path, poll=0.25)
    seen = []
    for _ in range(16):
        rec.tick()
        seen.append(status(rec, 31).state)
        clock.sleep(0.25)
    assert seen[0] == "pending" and seen[-1] == "running"
    phases = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert phases == ["pending", "pulling", "starting", "running"]
    running = status(rec, 31)
    assert running.ports == {"22": 40000, "8888": 40001}
    assert running.gpus == ("GPU-31-a", "GPU-31-b") and running.generation == 0 and running.exit_code is None
    fields = rec.report_fields()
    assert fields["workloads_version"] == 1
    assert fields["workloads"] == [
        {
            "id": 31,
            "state": "running",
            "progress": None,
            "ports": {"22": 40000, "8888": 40001},
            "message": "",
            "exit_code": None,
            "generation": 0,
            "gpus": ["GPU-31-a", "GPU-31-b"],
        }
    ]
    assert runtime.history == [("create", 31)]


def test_pulling_reports_its_progress(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.tick()
    clock.sleep(0.3 + 0.75)  # half-way through the simulated 1.5 s pull
    rec.tick()
    pulling = status(rec, 31)
    assert pulling.state == "pulling" and pulling.progress == 50 and pulling.message == "pulling 50%"


def test_two_workloads_get_different_host_ports(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31), workload(32))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=6)
    ports = [set(status(rec, w).ports.values()) for w in (31, 32)]
    assert not ports[0] & ports[1] and all(40000 <= p <= 40099 for p in ports[0] | ports[1])


def test_nothing_is_reported_as_a_version_before_the_first_desired_state(source, runtime, clock, tmp_path):
    source.down = True
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=30)
    assert rec.report_fields() == {"workloads": []}
    assert runtime.history == []


# -- adopting ----------------------------------------------------------------------------------------------------


def test_a_restarted_agent_adopts_what_runs_and_never_starts_it_twice(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    reconciler(source, runtime, clock, tmp_path).run(duration=10)
    # A new agent process: a new runtime reading the same (simulated) host, a new reconciler.
    again = SimulatedRuntime(clock=clock.time, state_file=str(tmp_path / "sim.json"))
    rec = reconciler(source, again, clock, tmp_path)
    rec.run(duration=30)
    assert states(rec) == {31: "running"} and again.history == [] and again.starts(31) == 1
    assert status(rec, 31).ports == {"22": 40000, "8888": 40001}


def test_a_restarted_agent_that_cannot_reach_the_platform_keeps_what_runs(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    reconciler(source, runtime, clock, tmp_path).run(duration=10)
    source.down = True
    again = SimulatedRuntime(clock=clock.time, state_file=str(tmp_path / "sim.json"))
    rec = reconciler(source, again, clock, tmp_path)
    rec.run(duration=600)
    assert states(rec) == {31: "running"} and again.history == []
    assert rec.report_fields()["workloads_version"] == 1  # the saved desired state's


def test_a_fresh_agent_without_a_desired_state_touches_nothing_while_the_platform_is_unreachable(
    source, runtime, clock, tmp_path
):
    source.payload = desired(1, workload(31))
    reconciler(source, runtime, clock, tmp_path).run(duration=10)
    (tmp_path / "state" / "workloads.json").unlink()  # no saved desired state at all
    source.down = True
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=300)
    assert states(rec) == {31: "running"} and runtime.history == [("create", 31)]
    assert "workloads_version" not in rec.report_fields()


# -- stopping and removing ---------------------------------------------------------------------------------------


def test_an_unreachable_platform_never_kills_a_running_workload(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.down = True
    rec.run(duration=3600)
    assert states(rec) == {31: "running"} and runtime.history == [("create", 31)]
    assert max(clock.waits) <= 3.0, "reconciling goes on every poll during the outage"
    assert rec.snapshot().error.endswith("Connection refused")


def test_stop_by_stops_and_removes_the_workload_while_the_platform_is_unreachable(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31, stop_by=iso(clock.time() + 60)), workload(32))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.down = True
    rec.run(duration=45)
    assert states(rec) == {31: "running", 32: "running"}
    rec.run(duration=10)  # past stop_by
    assert ("remove", 31) in runtime.history and 31 not in runtime.observe()
    assert states(rec) == {31: "cleaned", 32: "running"}


def test_a_restarted_agent_still_knows_stop_by_during_an_outage(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31, stop_by=iso(clock.time() + 120)))
    reconciler(source, runtime, clock, tmp_path).run(duration=10)
    source.down = True
    again = SimulatedRuntime(clock=clock.time, state_file=str(tmp_path / "sim.json"))
    rec = reconciler(source, again, clock, tmp_path)  # restarted, and the platform is unreachable from the start
    rec.run(duration=100)
    assert states(rec) == {31: "running"}
    rec.run(duration=20)
    assert again.history == [("remove", 31)] and again.observe() == {}
    assert states(rec) == {31: "cleaned"}


def test_a_workload_left_out_of_the_desired_state_is_removed(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31), workload(32))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31))
    rec.run(duration=6)
    assert runtime.history == [("create", 31), ("create", 32), ("remove", 32)]
    assert set(runtime.observe()) == {31}


# -- workloads_version ---------------------------------------------------------------------------------------------


def test_the_version_waits_until_every_removal_of_it_is_done(source, clock, tmp_path):
    runtime = SimulatedRuntime(clock=clock.time, stop_s=7.0)  # a removal that takes a while (the grace period)
    source.payload = desired(1, workload(31), workload(32))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    assert rec.report_fields()["workloads_version"] == 1
    source.payload = desired(2, workload(31))
    rec.run(duration=4)
    fields = rec.report_fields()
    assert fields["workloads_version"] == 1, "32 is still stopping"
    assert {w["id"]: w["state"] for w in fields["workloads"]} == {31: "running", 32: "stopping"}
    rec.run(duration=6)
    fields = rec.report_fields()
    assert fields["workloads_version"] == 2
    assert {w["id"]: w["state"] for w in fields["workloads"]} == {31: "running", 32: "cleaned"}


def test_cleaned_is_reported_a_few_times_then_left_out(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31), workload(32))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31))
    rec.run(duration=6)
    reported = [[w["state"] for w in rec.report_fields()["workloads"] if w["id"] == 32] for _ in range(5)]
    assert reported == [["cleaned"]] * CLEANED_REPORTS + [[]] * (5 - CLEANED_REPORTS)
    rec.run(duration=6)  # later passes do not bring it back
    assert [w.id for w in rec.snapshot().workloads] == [31]


def test_a_new_version_with_only_additions_is_done_at_once(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31), workload(33))
    rec.run(duration=3)
    fields = rec.report_fields()
    assert fields["workloads_version"] == 2
    assert {w["id"]: w["state"] for w in fields["workloads"]}[33] in ("pending", "pulling")


def test_the_version_and_the_desired_state_survive_a_restart(source, runtime, clock, tmp_path):
    source.payload = desired(5, workload(31))
    reconciler(source, runtime, clock, tmp_path).run(duration=10)
    saved = json.loads((tmp_path / "state" / "workloads.json").read_text())
    assert saved["desired"]["version"] == 5 and saved["done_version"] == 5
    assert read_state(str(tmp_path / "state"))["workloads"][0]["state"] == "running"
    source.down = True
    rec = reconciler(source, runtime, clock, tmp_path)
    assert rec.report_fields()["workloads_version"] == 5
    assert rec.desired is not None and rec.desired.version == 5


# -- restart, stop, spec change, failure -------------------------------------------------------------------------


def test_a_generation_bump_recreates_the_workload(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31, generation=1))
    rec.run(duration=3)
    assert status(rec, 31).generation in (0, 1)
    rec.run(duration=10)
    assert runtime.history == [("create", 31), ("remove", 31), ("create", 31)]
    assert status(rec, 31).state == "running" and status(rec, 31).generation == 1


def test_a_spec_change_recreates_the_workload(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31, image="suanli/vllm:0.6"))
    rec.run(duration=12)
    assert runtime.history == [("create", 31), ("remove", 31), ("create", 31)]
    assert status(rec, 31).state == "running"


def test_a_change_of_the_deadline_alone_does_not_recreate(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31, stop_by=iso(clock.time() + 3600)))
    rec.run(duration=12)
    assert runtime.history == [("create", 31)]


def test_desired_stopped_stops_and_keeps_it_and_running_starts_it_again(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = desired(2, workload(31, desired="stopped"))
    rec.run(duration=6)
    stopped = status(rec, 31)
    assert (stopped.state, stopped.exit_code, stopped.message) == ("exited", 143, "stopped")
    assert 31 in runtime.observe(), "kept, not removed"
    assert rec.report_fields()["workloads_version"] == 2
    rec.run(duration=30)
    assert runtime.history == [("create", 31), ("stop", 31)]
    source.payload = desired(3, workload(31))
    rec.run(duration=6)
    assert status(rec, 31).state == "running"
    assert runtime.history == [("create", 31), ("stop", 31), ("start", 31)]


def test_a_workload_wanted_stopped_from_the_start_is_never_created(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31, desired="stopped"))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    assert runtime.history == []
    assert (status(rec, 31).state, status(rec, 31).message) == ("exited", "stopped")


def test_a_workload_whose_process_ended_stays_exited_until_a_restart(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    runtime.crash(31, exit_code=3)
    rec.run(duration=30)
    assert (status(rec, 31).state, status(rec, 31).exit_code) == ("exited", 3)
    assert runtime.history == [("create", 31)]
    source.payload = desired(2, workload(31, generation=1))
    rec.run(duration=10)
    assert status(rec, 31).state == "running" and status(rec, 31).exit_code is None


def test_a_failed_pull_is_reported_failed_with_its_reason(source, clock, tmp_path):
    runtime = SimulatedRuntime(clock=clock.time, fail_images=["suanli/missing:1"])
    source.payload = desired(1, workload(31, image="suanli/missing:1"))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    failed = status(rec, 31)
    assert failed.state == "failed" and "pull access denied" in failed.message


# -- the desired state itself ------------------------------------------------------------------------------------


def test_a_refused_get_is_tried_again_slowly_and_changes_nothing(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.refuse = 404
    calls = source.calls
    rec.run(duration=120)
    assert source.calls - calls <= 3 and states(rec) == {31: "running"}


def test_a_malformed_desired_state_is_ignored_and_the_last_one_stays(source, runtime, clock, tmp_path):
    source.payload = desired(1, workload(31))
    rec = reconciler(source, runtime, clock, tmp_path)
    rec.run(duration=10)
    source.payload = {"version": "seven", "workloads": []}
    rec.run(duration=30)
    assert rec.desired.version == 1 and states(rec) == {31: "running"} and runtime.history == [("create", 31)]


def test_the_desired_state_is_parsed_as_the_contract_says():
    parsed = Desired.from_dict(desired(7, workload(31, stop_by="2026-12-07T15:00:00+00:00", generation=2)))
    assert parsed.version == 7 and parsed.port_range == (40000, 40099) and parsed.public_host == "gpu1.example.com"
    (spec,) = parsed.workloads
    assert spec.stop_by == datetime(2026, 12, 7, 15, tzinfo=UTC).timestamp()
    assert (spec.id, spec.lease, spec.generation, spec.ports) == (31, 131, 2, (22, 8888))
    assert spec.gpus == ("GPU-31-a", "GPU-31-b") and spec.env == {"JUPYTER_TOKEN": "t"}
    assert spec.limits.cpus == 28.0 and spec.limits.memory_mb == 262144 and spec.limits.disk_gb == 100
    with pytest.raises(ValueError):
        Desired.from_dict({"version": 1, "workloads": [workload(1), workload(1)]})


def test_the_spec_hash_covers_what_needs_a_new_container_and_nothing_else():
    base = WorkloadSpec.from_dict(workload(31))
    for change in (
        {"image": "other:1"},
        {"command": ["python", "x.py"]},
        {"env": {"A": "B"}},
        {"ports": [22]},
        {"gpus": ["GPU-x"]},
        {"ssh_keys": ["ssh-ed25519 AAAA other"]},
        {"limits": {"cpus": 1}},
        {"access": "host"},
    ):
        assert WorkloadSpec.from_dict(workload(31, **change)).spec_hash != base.spec_hash, change
    for same in ({"generation": 4}, {"desired": "stopped"}, {"stop_by": "2030-01-01T00:00:00+00:00"}, {"lease": 9}):
        assert WorkloadSpec.from_dict(workload(31, **same)).spec_hash == base.spec_hash, same


def test_snapshot_is_safe_to_read_from_another_thread_while_the_loop_runs(source, tmp_path):
    import threading
    import time

    source.payload = desired(1, workload(31), workload(32))
    runtime = SimulatedRuntime(pending_s=0.01, pull_s=0.02, start_s=0.01)
    rec = Reconciler(source, runtime, str(tmp_path / "state"), poll=0.01)
    rec.start()
    seen = set()
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline and seen != {"running"}:
            snap = rec.snapshot()
            seen = {w.state for w in snap.workloads} if snap.workloads else set()
            time.sleep(0.005)
    finally:
        rec.stop()
        rec.join(5)
    assert seen == {"running"} and not threading.current_thread().name.startswith("workloads")
