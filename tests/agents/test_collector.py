import pynvml
import pytest

from agents.nvml import Collector, NvmlUnavailable, decode_throttle_reasons
from tests.agents.fakes import FakeNVML, cards

ALL_FIELDS = {
    "uuid",
    "index",
    "name",
    "utilization_pct",
    "memory_util_pct",
    "memory_used_mb",
    "memory_total_mb",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "ecc_sbe",
    "ecc_dbe",
    "ecc_sbe_aggregate",
    "ecc_dbe_aggregate",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "remap_pending",
    "remap_failed",
    "xid_errors",
    "throttle_reasons",
    "pcie_replay_count",
    "fan_pct",
}


def started(nvml: FakeNVML) -> Collector:
    collector = Collector(nvml)
    collector.start()
    return collector


def test_every_field_is_collected_with_the_units_the_platform_expects():
    sample = started(FakeNVML(cards(1))).collect()[0]
    assert set(sample) == ALL_FIELDS
    assert sample == {
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "utilization_pct": 87,
        "memory_util_pct": 41,
        "memory_used_mb": 70000,
        "memory_total_mb": 81559,
        "temperature_c": 66,
        "power_w": 612.3,
        "power_limit_w": 700.0,
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 2619,
        "ecc_sbe": 2,
        "ecc_dbe": 0,
        "ecc_sbe_aggregate": 17,
        "ecc_dbe_aggregate": 1,
        "retired_pages_sbe": 3,
        "retired_pages_dbe": 1,
        "retired_pages_pending": False,
        "remapped_rows_correctable": 3,
        "remapped_rows_uncorrectable": 1,
        "remap_pending": False,
        "remap_failed": False,
        "xid_errors": [],
        "throttle_reasons": ["sw_power_cap", "hw_thermal_slowdown"],
        "pcie_replay_count": 12,
        "fan_pct": 55,
    }


def test_inventory_gives_what_enrolment_sends():
    assert started(FakeNVML(cards(2))).inventory() == [
        {
            "index": i,
            "uuid": f"GPU-00000000-0000-0000-0000-{i:012d}",
            "name": "NVIDIA H100 80GB HBM3",
            "serial": "1650123456789",
            "memory_total_mb": 81559,
        }
        for i in range(2)
    ]


@pytest.mark.parametrize(
    ("function", "absent"),
    [
        ("nvmlDeviceGetTotalEccErrors", {"ecc_sbe", "ecc_dbe", "ecc_sbe_aggregate", "ecc_dbe_aggregate"}),
        ("nvmlDeviceGetRetiredPages", {"retired_pages_sbe", "retired_pages_dbe"}),
        ("nvmlDeviceGetRetiredPagesPendingStatus", {"retired_pages_pending"}),
        (
            "nvmlDeviceGetRemappedRows",
            {"remapped_rows_correctable", "remapped_rows_uncorrectable", "remap_pending", "remap_failed"},
        ),
        ("nvmlDeviceGetFanSpeed", {"fan_pct"}),
        ("nvmlDeviceGetPcieReplayCounter", {"pcie_replay_count"}),
        ("nvmlDeviceGetUtilizationRates", {"utilization_pct", "memory_util_pct"}),
        ("nvmlDeviceGetPowerUsage", {"power_w"}),
        ("nvmlDeviceGetName", {"name"}),
    ],
)
def test_a_not_supported_call_leaves_its_fields_absent_and_the_rest_intact(function, absent):
    fake = FakeNVML(cards(2))
    fake.cards[1].unsupported.add(function)
    first, second = started(fake).collect()
    assert set(first) == ALL_FIELDS
    assert set(second) == ALL_FIELDS - absent


def test_a_consumer_card_without_ecc_retirement_or_remapping_reports_the_rest():
    fake = FakeNVML(cards(1))
    fake.cards[0].unsupported |= {
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetSerial",
    }
    collector = started(fake)
    sample = collector.collect()[0]
    assert "ecc_dbe" not in sample and "remap_pending" not in sample and "retired_pages_sbe" not in sample
    assert sample["utilization_pct"] == 87 and sample["fan_pct"] == 55
    assert "serial" not in collector.inventory()[0]


def test_an_unsupported_call_is_not_asked_again():
    fake = FakeNVML(cards(1))
    fake.cards[0].unsupported.add("nvmlDeviceGetFanSpeed")
    collector = started(fake)
    collector.collect()
    collector.collect()
    assert fake.calls.count("nvmlDeviceGetFanSpeed") == 1


def test_any_other_nvml_error_or_a_binding_bug_costs_the_field_not_the_agent():
    fake = FakeNVML(cards(1))
    collector = started(fake)

    def unknown(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    def bug(h):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")

    fake.nvmlDeviceGetPcieReplayCounter = unknown
    fake.nvmlDeviceGetFanSpeed = bug
    sample = collector.collect()[0]
    assert "pcie_replay_count" not in sample and "fan_pct" not in sample
    assert sample["temperature_c"] == 66


def test_a_card_that_fell_off_the_bus_is_flagged_lost():
    fake = FakeNVML(cards(2))
    collector = started(fake)

    def lost(h, *a):
        if h.index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return 50

    fake.nvmlDeviceGetTemperature = lost
    first, second = collector.collect()
    assert second["gpu_lost"] is True and "temperature_c" not in second
    assert "gpu_lost" not in first


def test_old_drivers_fall_back_to_the_throttle_reasons_call():
    fake = FakeNVML(cards(1))
    fake.cards[0].unsupported.add("nvmlDeviceGetCurrentClocksEventReasons")
    fake.cards[0].reasons = 0x20
    assert started(fake).collect()[0]["throttle_reasons"] == ["sw_thermal_slowdown"]


def test_throttle_bitmask_decodes_into_names():
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(pynvml.nvmlClocksEventReasonGpuIdle) == ["gpu_idle"]
    assert decode_throttle_reasons(
        pynvml.nvmlClocksEventReasonSwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
        | pynvml.nvmlClocksEventReasonSwPowerCap
        | pynvml.nvmlClocksEventReasonHwSlowdown
    ) == ["sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake"]
    assert decode_throttle_reasons(0x1 | 0x8000) == ["gpu_idle", "unknown_0x8000"]


def test_xid_events_are_drained_into_each_cards_xid_errors_once():
    fake = FakeNVML(cards(4))
    collector = started(fake)
    xid = pynvml.nvmlEventTypeXidCriticalError
    fake.events += [(3, xid, 79), (1, xid, 13), (3, xid, 48)]
    samples = collector.collect()
    assert [s["xid_errors"] for s in samples] == [[], [13], [], [79, 48]]
    assert all(not s.get("event_wait_failed") for s in samples)
    assert [s["xid_errors"] for s in collector.collect()] == [[], [], [], []]


def test_an_xid_nvml_cannot_tie_to_a_card_is_reported_on_every_card():
    fake = FakeNVML(cards(2))
    collector = started(fake)
    fake.events.append((None, pynvml.nvmlEventTypeXidCriticalError, 79))
    assert [s["xid_errors"] for s in collector.collect()] == [[79], [79]]


def test_an_event_wait_failure_flags_every_card_until_a_clean_drain():
    fake = FakeNVML(cards(3))
    collector = started(fake)
    fake.wait_error = pynvml.NVML_ERROR_UNKNOWN
    assert [s.get("event_wait_failed") for s in collector.collect()] == [True, True, True]
    fake.wait_error = None
    assert [s.get("event_wait_failed") for s in collector.collect()] == [None, None, None]


def test_a_card_that_cannot_register_for_events_has_no_xid_errors_field():
    fake = FakeNVML(cards(2))
    fake.register_error[1] = pynvml.NVML_ERROR_NOT_SUPPORTED
    first, second = started(fake).collect()
    assert first["xid_errors"] == [] and "xid_errors" not in second


@pytest.mark.parametrize(
    "error", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_NO_PERMISSION]
)
def test_no_driver_raises_one_clear_line(error):
    with pytest.raises(NvmlUnavailable) as exc:
        Collector(FakeNVML(cards(1), init_error=error)).start()
    message = str(exc.value)
    assert message.startswith("NVML is not available: ") and "\n" not in message


def test_no_gpu_raises_one_clear_line():
    with pytest.raises(NvmlUnavailable, match="no GPU"):
        Collector(FakeNVML([])).start()


def test_the_real_pynvml_without_a_driver_is_reported_not_raised():
    collector = Collector()  # the real pynvml module
    try:
        collector.start()
    except NvmlUnavailable as exc:
        assert "NVML" in str(exc)
    else:  # a machine with an NVIDIA driver: the real path must work too
        try:
            samples = collector.collect()
            assert samples and all(s["uuid"].startswith("GPU-") for s in samples)
        finally:
            collector.close()


def test_percentages_are_kept_within_0_to_100_as_the_platform_requires():
    fake = FakeNVML(cards(1))
    fake.cards[0].fan = 117  # NVML: the intended fan speed "may exceed 100%"
    assert started(fake).collect()[0]["fan_pct"] == 100
