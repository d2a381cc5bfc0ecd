import json
import re

import pytest

from agents.nvml import Collector
from agents.simulate import MODELS, FaultFile, SimulatedNVML, find_model, parse_fault


class Tick:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def collect(sim: SimulatedNVML):
    collector = Collector(sim)
    collector.start()
    return collector, collector.collect()


def test_simulated_cards_have_stable_uuids_from_the_seed():
    a = SimulatedNVML(8, "h100", "host-a")
    b = SimulatedNVML(8, "h100", "host-a")
    c = SimulatedNVML(8, "h100", "host-b")
    uuids = [card.uuid for card in a.cards]
    assert uuids == [card.uuid for card in b.cards]
    assert set(uuids).isdisjoint(card.uuid for card in c.cards)
    assert len(set(uuids)) == 8
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", u) for u in uuids)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("H100 SXM", "NVIDIA H100 80GB HBM3"),
        ("h200", "NVIDIA H200"),
        ("A100", "NVIDIA A100-SXM4-80GB"),
        ("a800", "NVIDIA A800-SXM4-80GB"),
        ("H20", "NVIDIA H20"),
        ("L40S", "NVIDIA L40S"),
        ("RTX 4090", "NVIDIA GeForce RTX 4090"),
        ("NVIDIA H200", "NVIDIA H200"),
    ],
)
def test_catalogue_models_report_their_nvml_names(model, name):
    assert find_model(model).name == name
    _, samples = collect(SimulatedNVML(2, model, "s"))
    assert {s["name"] for s in samples} == {name}


def test_an_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown GPU model"):
        find_model("V100")


def test_the_consumer_card_has_no_ecc_and_the_sxm_card_no_fan():
    _, (gaming,) = collect(SimulatedNVML(1, "rtx4090", "s"))
    assert "ecc_dbe" not in gaming and "remap_pending" not in gaming and "fan_pct" in gaming
    _, (sxm,) = collect(SimulatedNVML(1, "h100", "s"))
    assert sxm["ecc_dbe"] == 0 and sxm["remap_pending"] is False and "fan_pct" not in sxm
    assert "retired_pages_sbe" not in sxm  # Hopper remaps rows instead of retiring pages


def test_load_follows_a_training_pattern_and_temperature_and_power_follow_load():
    clock = Tick()
    sim = SimulatedNVML(8, "h100", "load", clock=clock)
    collector = Collector(sim)
    collector.start()
    busy, idle = [], []
    for step in range(0, 6 * 3600, 60):
        clock.t = 1_800_000_000.0 + step
        for s in collector.collect():
            (busy if s["utilization_pct"] > 50 else idle).append(s)
    assert busy and idle
    assert sum(s["temperature_c"] for s in busy) / len(busy) > sum(s["temperature_c"] for s in idle) / len(idle) + 15
    assert min(s["power_w"] for s in busy) > max(s["power_w"] for s in idle)
    assert all(0 <= s["utilization_pct"] <= 100 for s in busy + idle)
    assert all(s["memory_used_mb"] <= s["memory_total_mb"] for s in busy + idle)


def test_the_same_seed_and_time_give_the_same_readings():
    first = collect(SimulatedNVML(4, "a100", "det", clock=Tick()))[1]
    second = collect(SimulatedNVML(4, "a100", "det", clock=Tick()))[1]
    assert first == second


def test_injected_faults_show_in_the_samples():
    sim = SimulatedNVML(4, "h100", "f", faults=["xid:79@3", "dbe@1", "hot@2", "pcie:60@0"], clock=Tick())
    collector, samples = collect(sim)
    assert samples[3]["xid_errors"] == [79]
    assert samples[1]["ecc_dbe"] == 1 and samples[1]["ecc_dbe_aggregate"] == 1 and samples[1]["remap_pending"]
    assert samples[2]["temperature_c"] == 95 and "hw_thermal_slowdown" in samples[2]["throttle_reasons"]
    sim.clock.t += 120
    assert collector.collect()[0]["pcie_replay_count"] == 120
    assert collector.collect()[3]["xid_errors"] == []


def test_nosupport_lost_and_eventfail_faults_reach_the_collector_as_nvml_errors():
    sim = SimulatedNVML(3, "h100", "f", clock=Tick())
    collector, _ = collect(sim)
    for spec in ("nosupport:ecc@0", "lost@1", "eventfail"):
        sim.inject(spec)
    samples = collector.collect()
    assert "ecc_sbe" not in samples[0] and "temperature_c" in samples[0]
    assert samples[1]["gpu_lost"] is True and "temperature_c" not in samples[1]
    assert all(s["event_wait_failed"] for s in samples)
    sim.inject("clear")
    samples = collector.collect()
    assert "gpu_lost" not in samples[1] and not any(s.get("event_wait_failed") for s in samples)


def test_silent_lasts_its_seconds():
    clock = Tick()
    sim = SimulatedNVML(1, "h100", "s", faults=["silent:120"], clock=clock)
    assert sim.suanli_silent()
    clock.t += 121
    assert not sim.suanli_silent()


@pytest.mark.parametrize("spec", ["xid", "xid:abc@1", "boom@1", "hot@x", "nosupport:nonsense@1", "silent"])
def test_bad_fault_specs_are_refused_with_the_grammar(spec):
    with pytest.raises(ValueError, match="bad fault"):
        parse_fault(spec)


def test_a_fault_on_a_card_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="no card 8"):
        SimulatedNVML(8, "h100", "s", faults=["xid:79@8"])


def test_the_fault_file_applies_each_new_line_once(tmp_path):
    path = tmp_path / "faults.jsonl"
    faults = FaultFile(str(path))
    assert faults.poll() == []
    path.write_text(json.dumps("xid:79@3") + "\n")
    assert faults.poll() == [parse_fault("xid:79@3")]
    assert faults.poll() == []
    with path.open("a") as fh:
        fh.write(json.dumps({"fault": "hot@2"}) + "\nnot json\n")
    assert faults.poll() == [parse_fault("hot@2")]


def test_every_model_has_sane_numbers():
    for model in MODELS.values():
        assert model.idle_power_w < model.power_limit_w and model.idle_sm_mhz < model.max_sm_mhz
        assert model.name.startswith("NVIDIA ")


def test_with_a_workload_runtime_the_cards_of_running_workloads_are_busy_and_the_rest_idle():
    """Issue 17: a demo card nobody rents reads idle, a rented one busy: `follow_workloads` ties the load to the
    workloads the runtime runs (agents/cli_commands.running_cards), instead of the training pattern."""
    from agents.cli_commands import running_cards
    from agents.runtime.base import WorkloadSpec
    from agents.runtime.simulated import SimulatedRuntime

    clock = Tick()
    sim = SimulatedNVML(8, "h100", "rented", clock=clock)
    runtime = SimulatedRuntime(clock=clock)
    sim.follow_workloads(lambda: running_cards(runtime))
    collector = Collector(sim)
    collector.start()
    rented = [sim.cards[2].uuid, sim.cards[5].uuid]
    idle_samples = []
    for step in range(0, 4 * 3600, 300):  # hours in which the pattern alone would have made most cards busy
        clock.t = 1_800_000_000.0 + step
        idle_samples += collector.collect()
    assert max(s["utilization_pct"] for s in idle_samples) <= 1
    assert max(s["memory_used_mb"] for s in idle_samples) < 1024

    runtime.ensure(WorkloadSpec(id=7, lease=3, gpus=tuple(rented), image="img"), (40000, 40999))
    clock.t += 5  # pending, pulling, starting: running after about two seconds
    assert running_cards(runtime) == set(rented)
    busy, idle = [], []
    for step in range(120, 3600, 60):  # past the job's warm-up minute
        clock.t = 1_800_000_005.0 + 4 * 3600 + step
        for s in collector.collect():
            (busy if s["uuid"] in rented else idle).append(s)
    assert sum(s["utilization_pct"] for s in busy) / len(busy) > 85
    assert max(s["utilization_pct"] for s in idle) <= 1
    assert min(s["power_w"] for s in busy) > max(s["power_w"] for s in idle)
