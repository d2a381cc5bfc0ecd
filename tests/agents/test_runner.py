import json

import pytest

from agents.client import Backoff, Client
from agents.nvml import Collector
from agents.runner import Agent, build_report, iso_utc
from agents.simulate import SimulatedNVML
from agents.spool import Spool
from tests.agents.fakes import FakeClock, FakePlatform


@pytest.fixture
def platform(clock):
    p = FakePlatform(wall=clock.time)
    yield p
    p.close()


def make_agent(tmp_path, platform, clock, *, gpus=8, faults=(), send_every=None, seed=7):
    sim = SimulatedNVML(gpus, "h100", "outage-host", faults=list(faults), clock=clock.time)
    collector = Collector(sim)
    collector.start()
    spool = Spool(str(tmp_path / "spool"), clock=clock.time)
    client = Client(platform.url, platform.AGENT_ID, platform.SECRET, timeout=2, wall=clock.time)
    import random

    rng = random.Random(seed)
    return Agent(
        collector,
        spool,
        client,
        interval=10,
        send_every=send_every,
        hostname="gpu-host-1",
        backoff=Backoff(rng=rng.random),
        clock=clock.monotonic,
        wall=clock.time,
        wait=clock.sleep,
    )


def assert_all_once_in_order(platform, expected_reports, gpus=8):
    seqs = [r["seq"] for r in platform.received]
    assert len(seqs) == expected_reports
    assert seqs == list(range(seqs[0], seqs[0] + expected_reports)), "in order, no gap"
    samples = [(r["seq"], g["uuid"]) for r in platform.received for g in r["gpus"]]
    assert len(samples) == len(set(samples)) == expected_reports * gpus, "every sample exactly once"


def test_after_a_ten_minute_outage_no_sample_is_lost_and_all_arrive_in_order(tmp_path, platform, clock):
    platform.down()
    clock.at(600, platform.up)  # the platform comes back after 10 minutes
    agent = make_agent(tmp_path, platform, clock)
    agent.run(duration=600)
    assert platform.received == [] and len(agent.spool) == 60  # 60 reports x 8 GPUs waiting on disk
    agent.run(duration=120)
    assert_all_once_in_order(platform, 72)
    assert len(agent.spool) == 0 and agent.stats["duplicates"] == 0 and agent.spool.dropped == 0
    assert max(clock.waits) <= 60, "back-off is capped at 60 s"
    sent_at = [r["sent_at"] for r in platform.received]
    assert sent_at == sorted(sent_at) and sent_at[0] == iso_utc(clock.start)


def test_an_outage_with_503s_and_retry_after_loses_nothing(tmp_path, platform, clock):
    platform.fail_next, platform.retry_after = 25, "30"
    agent = make_agent(tmp_path, platform, clock)
    delays = []
    draw = agent.backoff.delay
    agent.backoff.delay = lambda attempt, retry_after=None: delays.append(draw(attempt, retry_after)) or delays[-1]
    agent.run(duration=900)
    assert_all_once_in_order(platform, 90)
    assert len(delays) == 25 and min(delays) >= 30, "every retry waited at least Retry-After"


def test_a_429_in_the_catch_up_after_an_outage_waits_its_retry_after_not_the_outage_back_off(tmp_path, platform, clock):
    platform.down()
    clock.at(600, platform.up)
    agent = make_agent(tmp_path, platform, clock)
    agent.run(duration=600)
    assert agent.attempt > 5, "the outage pushed the back-off towards its 60 s cap"
    send = agent.client.send_report

    def rate_limited_after_ten(body):  # the platform's per-agent limit answers the 11th report of the catch-up
        if len(platform.received) == 10 and platform.requests and not platform.retry_after:
            platform.fail_next, platform.fail_status, platform.retry_after = 1, 429, "2"
        return send(body)

    agent.client.send_report = rate_limited_after_ten
    delays = []
    draw = agent.backoff.delay
    agent.backoff.delay = lambda attempt, retry_after=None: (
        delays.append((retry_after, draw(attempt, retry_after))) or (delays[-1][1])
    )
    agent.run(duration=120)
    assert_all_once_in_order(platform, 72)
    after_429 = [delay for retry_after, delay in delays if retry_after == 2]
    assert after_429 == [2], "the catch-up resumed after Retry-After, not after up to 60 s of outage back-off"


def test_the_spool_survives_an_agent_restart_during_an_outage(tmp_path, platform, clock):
    platform.down()
    first = make_agent(tmp_path, platform, clock)
    first.run(duration=300)
    assert len(first.spool) == 30
    first.collector.close()
    platform.up()
    second = make_agent(tmp_path, platform, clock)  # a new process: same spool directory
    second.run(duration=100)
    assert_all_once_in_order(platform, 40)


def test_a_refused_report_is_dropped_and_the_queue_moves_on(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=2)
    first = agent.spool.peek_seq()
    platform.refuse_seqs = {first + 2}
    agent.run(duration=60)
    assert [r["seq"] for r in platform.received] == [first, first + 1, first + 3, first + 4, first + 5]
    assert agent.stats["refused"] == agent.spool.refused == 1 and len(agent.spool) == 0


def test_one_report_per_interval_with_the_report_fields(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=2)
    agent.run(duration=30)
    assert len(platform.received) == 3
    r = platform.received[0]
    assert set(r) == {"seq", "sent_at", "interval_s", "agent_version", "hostname", "gpus"}
    assert r["interval_s"] == 10 and r["hostname"] == "gpu-host-1" and r["sent_at"].endswith("+00:00")
    assert len(r["gpus"]) == 2 and r["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"


def test_send_every_batches_the_sends_but_not_the_reports(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1, send_every=60)
    seen = []
    clock.at(55, lambda: seen.append((len(platform.received), len(agent.spool))))
    agent.run(duration=125)
    assert seen == [(1, 5)]  # sent at 0 s; the reports of 10 .. 50 s wait for the send at 60 s
    assert_all_once_in_order(platform, 13, gpus=1)


def test_a_silent_host_neither_collects_nor_sends(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1, faults=["silent:60"])
    agent.run(duration=120)
    assert len(platform.received) == 6  # t = 60 .. 110
    assert json.loads(json.dumps(platform.received[0]))["sent_at"] == iso_utc(clock.start + 60)


def test_a_fault_file_line_reaches_the_next_report(tmp_path, platform, clock):
    faults = tmp_path / "faults.jsonl"
    sim = SimulatedNVML(4, "h100", "ff", fault_file=str(faults), clock=clock.time)
    collector = Collector(sim)
    collector.start()
    spool = Spool(str(tmp_path / "spool"), clock=clock.time)
    client = Client(platform.url, platform.AGENT_ID, platform.SECRET, wall=clock.time)
    agent = Agent(collector, spool, client, interval=10, clock=clock.monotonic, wall=clock.time, wait=clock.sleep)
    clock.at(25, lambda: faults.write_text('{"fault": "xid:79@3"}\n'))
    agent.run(duration=50)
    xids = [r["gpus"][3]["xid_errors"] for r in platform.received]
    assert xids == [[], [], [], [79], []]


def test_stop_ends_the_loop_after_the_send_in_flight(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1)
    clock.at(35, agent.stop)
    agent.run()
    assert len(platform.received) == 4 and len(agent.spool) == 0


def test_a_collection_that_raises_skips_the_interval_without_ending_the_loop(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1)
    real = agent.collector.collect
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real()

    agent.collector.collect = flaky
    agent.run(duration=40)
    assert len(platform.received) == 3


def test_build_report_shape():
    report = build_report(5, [{"uuid": "GPU-1"}], interval=10.0, hostname="h", wall=1_800_000_000.25)
    assert report["sent_at"] == "2027-01-15T08:00:00.250+00:00"
    assert report["seq"] == 5 and report["gpus"] == [{"uuid": "GPU-1"}]


def test_the_fake_clock_only_moves_when_waited_on():
    clock = FakeClock(100.0)
    fired = []
    clock.at(5, lambda: fired.append(clock.monotonic()))
    clock.sleep(3)
    assert fired == []
    clock.sleep(3)
    assert fired == [6.0]


def test_a_full_disk_does_not_stop_reporting_while_the_platform_answers(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1)

    def disk_full(seq, body):
        raise OSError(28, "No space left on device")

    agent.spool.put = disk_full
    agent.run(duration=30)
    seqs = [r["seq"] for r in platform.received]
    assert len(seqs) == 3 and seqs == sorted(seqs)


class StubReconciler:
    def __init__(self, fields=None, error=None):
        self.fields, self.error = fields, error

    def report_fields(self):
        if self.error:
            raise self.error
        return self.fields


def test_each_report_carries_the_reconcilers_workloads_and_version(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1)
    entry = {"id": 31, "state": "running", "progress": None, "ports": {"22": 40000}, "message": "", "exit_code": None}
    agent.reconciler = StubReconciler({"workloads": [{**entry, "generation": 0, "gpus": []}], "workloads_version": 7})
    agent.run(duration=20)
    assert len(platform.received) == 2
    for report in platform.received:
        assert report["workloads_version"] == 7 and report["workloads"][0]["state"] == "running"
        assert {"seq", "sent_at", "gpus"} <= set(report)


def test_a_reconciler_that_fails_does_not_stop_the_telemetry(tmp_path, platform, clock):
    agent = make_agent(tmp_path, platform, clock, gpus=1)
    agent.reconciler = StubReconciler(error=RuntimeError("bug"))
    agent.run(duration=20)
    assert len(platform.received) == 2 and "workloads" not in platform.received[0]
