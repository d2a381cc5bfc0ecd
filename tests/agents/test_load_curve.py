"""`--load-curve`: the simulated cards' utilisation over time (agents/sim_load.py), what elastic leases scale on."""

from __future__ import annotations

import json
import os

import pytest

from agents import cli
from agents.nvml import Collector
from agents.sim_load import LoadCurveError, LoadSource, parse_curve_file, parse_curve_text
from agents.simulate import SimulatedNVML
from tests.agents.test_cli import enroll, run_cli

T0 = 1_800_000_000.0


class Tick:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_curve_is_linear_between_its_points_and_holds_its_ends():
    curve = parse_curve_text("0:20,300:95,900:95,1200:10")
    assert curve.at(0) == 20 and curve.at(150) == pytest.approx(57.5) and curve.at(300) == 95
    assert curve.at(600) == 95 and curve.at(1050) == pytest.approx(52.5) and curve.at(1200) == 10
    assert curve.at(10_000) == 10  # the last point's value holds
    late = parse_curve_text("60:50 120:70")  # before the first point: the first point's value
    assert late.at(0) == 50 and late.at(90) == pytest.approx(60)


def test_a_repeating_curve_starts_again_at_its_last_point():
    curve = parse_curve_text("0:90,60:90,61:10,120:10,repeat")
    assert [curve.at(t) for t in (30, 90, 150, 210, 1230)] == [90, 10, 90, 10, 90]
    assert curve.describe() == "0:90,60:90,61:10,120:10,repeat"


def test_text_takes_new_lines_comments_and_percent_signs():
    curve = parse_curve_text("# warm up\n0:20%\n300:95   # busy\n\n900:95,1200:10\n")
    assert curve.times == (0, 300, 900, 1200) and curve.values == (20, 95, 95, 10)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("", "at least one point"),
        ("repeat", "at least one point"),
        ("0:20,abc", "is not SECONDS:PERCENT"),
        ("0:20:30", "is not SECONDS:PERCENT"),
        ("x:20", "is not SECONDS:PERCENT"),
        ("-5:20", "0 or more"),
        ("0:101", "from 0 to 100"),
        ("0:-1", "from 0 to 100"),
        ("0:nan", "not a point of numbers"),
        ("inf:20", "not a point of numbers"),
        ("0:20,0:30", "must increase"),
        ("10:20,5:30", "must increase"),
        ("0:20,repeat", "last point after second 0"),
    ],
)
def test_a_bad_curve_is_refused_with_what_is_wrong(spec, says):
    with pytest.raises(LoadCurveError, match=says):
        parse_curve_text(spec)


def test_a_json_file_or_a_text_file(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([[0, 10], [100, 60]]))
    assert parse_curve_file(str(pairs)).at(50) == pytest.approx(35)
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"points": [[0, 80], [10, 20]], "repeat": True}))
    assert parse_curve_file(str(obj)).at(15) == pytest.approx(50)
    text = tmp_path / "curve.txt"
    text.write_text("0:30\n10:40\n")
    assert parse_curve_file(str(text)).at(5) == pytest.approx(35)
    for bad, says in [
        ('[[0, 10], [1, "x"]]', "pair of numbers"),
        ("[[0, true]]", "pair of numbers"),
        ('{"points": 3}', "list of"),
        ('{"points": [[0, 1]], "repeat": "yes"}', "true or false"),
        ("[[0, 10]", "not valid JSON"),
    ]:
        text.write_text(bad)
        with pytest.raises(LoadCurveError, match=says):
            parse_curve_file(str(text))
    text.write_bytes(b"\xff\xfe")
    with pytest.raises(LoadCurveError, match="UTF-8"):
        parse_curve_file(str(text))
    with pytest.raises(LoadCurveError, match="cannot read"):
        parse_curve_file(str(tmp_path / "missing" / "curve.txt"))


def test_a_changed_file_applies_from_when_it_is_read_and_a_broken_one_keeps_the_curve(tmp_path):
    path = tmp_path / "load.txt"
    path.write_text("0:20,100:70")
    clock = Tick()
    source = LoadSource(str(path), clock)
    clock.t += 50
    source.poll()  # unchanged
    assert source.utilization(clock.t) == pytest.approx(45)
    path.write_text("0:90,10:30")
    os.utime(path, ns=(1, 1))  # a stamp that surely differs from the first write's
    clock.t += 0.5
    source.poll()  # under a second since the last look: not read yet
    assert source.utilization(clock.t) == pytest.approx(45.25)
    clock.t += 1
    source.poll()
    assert source.utilization(clock.t) == 90 and source.began == clock.t
    assert source.utilization(clock.t + 5) == pytest.approx(60)
    path.write_text("0:nonsense")
    clock.t += 2
    source.poll()
    assert source.utilization(clock.t) == pytest.approx(78)  # the last good curve, 2 s in
    path.unlink()
    clock.t += 2
    source.poll()
    assert source.curve.describe() == "0:90,10:30"


def test_without_workloads_every_card_follows_the_curve_with_a_little_noise():
    clock = Tick()
    sim = SimulatedNVML(8, "h100", "curve", load_curve="0:20,300:95,900:95,1200:10", clock=clock)
    collector = Collector(sim)
    collector.start()
    for elapsed, expected in [(0, 20), (150, 57.5), (600, 95), (1050, 52.5), (5000, 10)]:
        clock.t = T0 + elapsed
        samples = collector.collect()
        assert len(samples) == 8
        for sample in samples:
            assert abs(sample["utilization_pct"] - expected) <= 2.01, (elapsed, sample["utilization_pct"])
    # Power follows the utilisation, as on the pattern.
    clock.t = T0 + 600
    busy_power = min(s["power_w"] for s in collector.collect())
    clock.t = T0 + 5000
    assert max(s["power_w"] for s in collector.collect()) < busy_power


def test_with_a_workload_runtime_only_the_running_workloads_cards_follow_the_curve():
    from agents.cli_commands import running_cards
    from agents.runtime.base import WorkloadSpec
    from agents.runtime.simulated import SimulatedRuntime

    clock = Tick()
    sim = SimulatedNVML(4, "h100", "curve-wl", load_curve="0:40,100:80", clock=clock)
    runtime = SimulatedRuntime(clock=clock)
    sim.follow_workloads(lambda: running_cards(runtime))
    collector = Collector(sim)
    collector.start()
    rented = {sim.cards[1].uuid, sim.cards[3].uuid}
    runtime.ensure(WorkloadSpec(id=9, lease=4, gpus=tuple(sorted(rented)), image="img"), (40000, 40999))
    clock.t = T0 + 50  # running by now
    by_uuid = {s["uuid"]: s["utilization_pct"] for s in collector.collect()}
    assert all(abs(by_uuid[u] - 60) <= 2.01 for u in rented)
    assert all(by_uuid[u] == 0 for u in by_uuid if u not in rented)


def test_the_cli_reports_the_curve_and_follows_a_changed_file(platform, tmp_path):
    """A running agent under --simulate 2 with the simulated runtime: its one workload's card reads the curve of the
    file, the other card idles; a new file's curve shows in the reports that follow."""
    assert enroll(platform, tmp_path) == 0
    seed = "curve-cli"
    uuid = SimulatedNVML(2, "h100", seed).cards[0].uuid
    platform.desired = {
        "version": 1,
        "server": 42,
        "public_host": "gpu-7.example.com",
        "port_range": [40000, 40999],
        "workloads": [
            {
                "id": 5,
                "lease": 6,
                "access": "container",
                "gpus": [uuid],
                "image": "img",
                "command": [],
                "env": {},
                "ports": [],
                "ssh_keys": [],
                "limits": {},
                "user": "root",
                "desired": "running",
                "generation": 0,
                "stop_by": None,
            }
        ],
    }
    curve = tmp_path / "load.txt"
    curve.write_text("0:70")
    common = [
        "--config",
        str(tmp_path / "agent.json"),
        "--spool-dir",
        str(tmp_path / "spool"),
        "--simulate",
        "2",
        "--seed",
        seed,
        "--load-curve",
        str(curve),
    ]
    assert cli.main([*common, "run", "--interval", "0.2", "--workloads-poll", "0.05", "--duration", "5"]) == 0
    readings = [{g["uuid"]: g["utilization_pct"] for g in r["gpus"]} for r in platform.received]
    running = [r for r in readings if r[uuid] > 0]
    assert running, readings
    assert all(abs(r[uuid] - 70) <= 2.01 for r in running)
    assert all(v == 0 for r in readings for u, v in r.items() if u != uuid), readings

    platform.received.clear()
    curve.write_text("0:15  # quieter")
    assert cli.main([*common, "run", "--interval", "0.2", "--workloads-poll", "0.05", "--duration", "5"]) == 0
    later = [r["gpus"][0]["utilization_pct"] for r in platform.received if r["gpus"][0]["utilization_pct"] > 0]
    assert later and all(abs(v - 15) <= 2.01 for v in later)


@pytest.mark.parametrize(
    "args",
    [
        ["--load-curve", "0:50", "once"],  # a curve needs --simulate
        ["--simulate", "8", "--load-curve", "0:150", "once"],
        ["--simulate", "8", "--load-curve", "0:20,soon:90", "once"],
        ["--simulate", "8", "--load-curve", "/no/such/curve.txt", "once"],
    ],
)
def test_a_bad_load_curve_exits_2_with_its_reason(agent_env, args):
    result = run_cli(agent_env, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "curve" in result.stderr.lower()


def test_once_reads_the_curve_at_its_start(agent_env):
    result = run_cli(agent_env, "--simulate", "4", "--load-curve", "0:33,3600:90", "once")
    assert result.returncode == 0, result.stderr
    values = [g["utilization_pct"] for g in json.loads(result.stdout)["gpus"]]
    assert len(values) == 4 and all(31 <= v <= 36 for v in values)
