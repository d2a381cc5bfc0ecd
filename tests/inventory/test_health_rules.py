"""The GPU health rules against injected NVML values (CHECKLIST: GPU health)."""

from datetime import UTC, datetime, timedelta

import pytest

from inventory.health import DEGRADED, FAILED, HEALTHY, GpuState, evaluate

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def verdict(sample, state=None, at=T0):
    return evaluate(sample, state or GpuState(), at)


@pytest.mark.parametrize("xid", [48, 63, 64, 74, 79, 94, 95])
def test_a_fatal_xid_fails_the_card_and_latches(xid):
    first = verdict({"xid_errors": [xid]})
    assert first.health == FAILED and first.latch and f"XID {xid}" in first.reason
    later = verdict({"xid_errors": []}, first.state, T0 + timedelta(minutes=5))
    assert later.health == FAILED, "a fatal XID stays until someone clears it"


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 68, 109])
def test_application_xids_leave_the_card_allocatable(xid):
    assert verdict({"xid_errors": [xid]}).health == HEALTHY


def test_any_uncorrectable_ecc_error_fails_the_card():
    assert verdict({"ecc_dbe": 1}).health == FAILED
    assert verdict({"ecc_dbe": 0, "ecc_sbe": 500}).health == HEALTHY


def test_retired_pages_59_pass_and_60_fail():
    assert verdict({"retired_pages_sbe": 50, "retired_pages_dbe": 9}).health == HEALTHY
    assert verdict({"retired_pages_sbe": 50, "retired_pages_dbe": 10}).health == FAILED


def test_pages_retired_for_dbe_15_pass_and_16_fail():
    assert verdict({"retired_pages_dbe": 15}).health == HEALTHY
    assert verdict({"retired_pages_dbe": 16}).health == FAILED


def test_row_remap_pending_or_failed_is_not_allocatable():
    pending = verdict({"remap_pending": True})
    assert pending.health == FAILED and not pending.latch
    assert verdict({"remap_pending": False}, pending.state).health == HEALTHY, "pending clears after a reset"
    failed = verdict({"remap_failed": True})
    assert failed.health == FAILED and failed.latch


def test_pcie_replays_8_per_minute_healthy_9_degraded():
    start = verdict({"pcie_replay_count": 100})
    assert verdict({"pcie_replay_count": 108}, start.state, T0 + timedelta(minutes=1)).health == HEALTHY
    assert verdict({"pcie_replay_count": 109}, start.state, T0 + timedelta(minutes=1)).health == DEGRADED


def test_thermal_throttling_degrades_only_when_sustained():
    hot = {"throttle_reasons": ["hw_thermal_slowdown"], "temperature_c": 94}
    state = GpuState()
    for seconds in range(0, 60, 10):
        result = verdict(hot, state, T0 + timedelta(seconds=seconds))
        assert result.health == HEALTHY
        state = result.state
    assert verdict(hot, state, T0 + timedelta(seconds=60)).health == DEGRADED
    cooled = verdict({"throttle_reasons": []}, state, T0 + timedelta(seconds=70))
    assert cooled.health == HEALTHY


def test_a_failed_event_wait_marks_the_card_unhealthy_until_a_clean_report():
    blind = verdict({"event_wait_failed": True})
    assert blind.health == FAILED and not blind.latch
    assert verdict({}, blind.state, T0 + timedelta(seconds=10)).health == HEALTHY


def test_a_lost_card_fails_and_latches():
    lost = verdict({"gpu_lost": True})
    assert lost.health == FAILED and lost.latch and "lost" in lost.reason
