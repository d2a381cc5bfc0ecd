"""A simulated NVML: an object with pynvml's function names, constants, error class and return shapes.

`SimulatedNVML(count, model, seed)` stands in for the `pynvml` module, so `--simulate N` goes through exactly the
collector code that runs on a real host: only the module object differs.

This module is pynvml's functions (`SimulatedNVML`); the rest lives beside it and is re-exported here: the model
catalogue and pynvml's error class and return shapes in `agents/sim_catalogue.py`, the fault grammar and fault file in
`agents/sim_faults.py`, the cards, fault application and load model in `agents/sim_cards.py` (`SimulatedCards`).

- Cards: N cards of one catalogue model (`MODELS`), with stable UUIDs (`GPU-xxxxxxxx-xxxx-...`) and serials derived
  from the seed and the card index, so a restarted simulated host is the same host (the default seed is the host name).
- Load: a training-job pattern, deterministic for a seed and a time. Time runs in 30-minute blocks; a block is a job on
  every card (~70 %), a job on half the cards (~15 %) or idle. A job holds ~96 % utilisation with noise, dips for a
  checkpoint every 10 minutes, and fills ~88 % of memory; temperature follows the utilisation of the last minute,
  power and clocks follow utilisation, power-capped when power nears the limit. Under `suanli-agent run` with a
  workload runtime (`follow_workloads`) a card is instead busy (the same job shape) while a running workload holds
  it and idle (0 %, memory free) otherwise, as a rented and an unrented card are.
  With a load curve (`--load-curve SPEC`, `agents/sim_load.py`) a busy card's utilisation follows the curve instead
  (seconds since the agent started -> %, linear in between, with ±1.5 % of noise): under a workload runtime the cards
  of running workloads, otherwise every card.
- What a card of that model does not have raises `NVMLError(NVML_ERROR_NOT_SUPPORTED)`, as the real one does: no fans on
  SXM or passive cards, no ECC on the RTX 4090, row remapping instead of page retirement from Ampere on.

Faults, from the CLI (`--fault SPEC`, repeatable) or appended to a fault file (`--fault-file PATH`, JSON lines re-read
every interval; each line a string `"xid:79@3"` or an object `{"fault": "xid:79@3"}`, each line applied once):

    xid:N@I          an XID N event on card I (delivered through the event set at the next drain)
    dbe@I            a double-bit ECC error on card I: volatile and aggregate DBE +1, a row remap (or page retirement)
                     recorded and pending
    sbe:N@I          N single-bit ECC errors on card I
    hot@I            card I at 95 C with hw_thermal_slowdown and clocks cut
    pcie:N@I         card I's PCIe link replaying N times a minute
    lost@I           every call on card I answers GPU_IS_LOST (a real "fallen off the bus" also sends xid:79)
    nosupport:F@I    calls for field group F answer NOT_SUPPORTED on card I (F: utilization, memory, temperature,
                     power, clocks, ecc, retired_pages, remapped_rows, throttle, pcie, fan, serial, events, or an
                     NVML function name)
    eventfail[:S]    the event wait fails (NVML_ERROR_UNKNOWN), for S seconds or until cleared
    silent:S         the host goes silent for S seconds: the agent neither collects nor sends
    nodriver         nvmlInit fails with NVML_ERROR_LIBRARY_NOT_FOUND (takes effect at the next nvmlInit)
    clear[@I]        clear the injected conditions of card I (or all cards) as a GPU reset would: hot, lost,
                     nosupport, pending remaps/retirements, PCIe rate, volatile ECC counters; and eventfail

`@I` may be left out for every card where that makes sense.
"""

from __future__ import annotations

from typing import Any

from agents.sim_cards import BLOCK_S, CHECKPOINT_EVERY_S, CHECKPOINT_S, SimulatedCards, _Card
from agents.sim_catalogue import (
    MIB,
    MODELS,
    GpuModel,
    NVMLError,
    SimEventSet,
    SimHandle,
    c_nvmlEventData_t,
    c_nvmlMemory_t,
    c_nvmlUtilization_t,
    find_model,
)
from agents.sim_faults import FIELD_GROUPS, Fault, FaultFile, parse_fault

__all__ = [
    "BLOCK_S",
    "CHECKPOINT_EVERY_S",
    "CHECKPOINT_S",
    "FIELD_GROUPS",
    "MIB",
    "MODELS",
    "Fault",
    "FaultFile",
    "GpuModel",
    "NVMLError",
    "SimEventSet",
    "SimHandle",
    "SimulatedCards",
    "SimulatedNVML",
    "c_nvmlEventData_t",
    "c_nvmlMemory_t",
    "c_nvmlUtilization_t",
    "find_model",
    "parse_fault",
]


class SimulatedNVML(SimulatedCards):
    """The fake `pynvml` module. Every function checks `nvmlInit` was called, as NVML does."""

    # -- pynvml's functions ---------------------------------------------------------------------------------------

    def _check_init(self) -> None:
        if not self._initialised:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)

    def _card(self, handle: Any, fn: str) -> _Card:
        self._check_init()
        if not isinstance(handle, SimHandle) or not 0 <= handle.index < len(self.cards):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        card = self.cards[handle.index]
        if card.lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        if fn in card.unsupported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return card

    def nvmlInit(self) -> None:
        if self.nodriver:
            raise NVMLError(self.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._check_init()
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return "550.127.08"

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimHandle:
        self._check_init()
        if not 0 <= index < len(self._handles):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return self._handles[index]

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._card(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._card(handle, "nvmlDeviceGetName")
        return self.model.name

    def nvmlDeviceGetSerial(self, handle: Any) -> str:
        card = self._card(handle, "nvmlDeviceGetSerial")
        if self.model.fan:  # GeForce boards have no serial in NVML
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return card.serial

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> c_nvmlUtilization_t:
        card = self._card(handle, "nvmlDeviceGetUtilizationRates")
        state = self._state(card.index)
        return c_nvmlUtilization_t(state["util"], state["mem_util"])

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> c_nvmlMemory_t:
        card = self._card(handle, "nvmlDeviceGetMemoryInfo")
        total = self.model.memory_mib * MIB
        used = min(total, self._state(card.index)["used"])
        return c_nvmlMemory_t(total, total - used, used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        card = self._card(handle, "nvmlDeviceGetTemperature")
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return self._state(card.index)["temp"]

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        card = self._card(handle, "nvmlDeviceGetPowerUsage")
        return self._state(card.index)["power_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._card(handle, "nvmlDeviceGetEnforcedPowerLimit")
        return self.model.power_limit_w * 1000

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        card = self._card(handle, "nvmlDeviceGetClockInfo")
        state = self._state(card.index)
        if type == self.NVML_CLOCK_SM:
            return state["sm"]
        if type == self.NVML_CLOCK_MEM:
            return state["mem_clock"]
        raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        card = self._card(handle, "nvmlDeviceGetTotalEccErrors")
        if not self.model.ecc:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        volatile = counterType == self.NVML_VOLATILE_ECC
        if errorType == self.NVML_SINGLE_BIT_ECC:
            return card.sbe if volatile else card.sbe_aggregate
        if errorType == self.NVML_DOUBLE_BIT_ECC:
            return card.dbe if volatile else card.dbe_aggregate
        raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]:
        card = self._card(device, "nvmlDeviceGetRetiredPages")
        if not self.model.page_retirement:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        if sourceFilter == self.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
            return list(card.retired_dbe)
        return list(card.retired_sbe)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        card = self._card(device, "nvmlDeviceGetRetiredPagesPendingStatus")
        if not self.model.page_retirement:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return int(card.retire_pending)

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        card = self._card(device, "nvmlDeviceGetRemappedRows")
        if not self.model.row_remap:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return (card.remapped_correctable, card.remapped_uncorrectable, int(card.remap_pending), 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        card = self._card(handle, "nvmlDeviceGetCurrentClocksEventReasons")
        return self._state(card.index)["mask"]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        card = self._card(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return self._state(card.index)["mask"]

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        card = self._card(handle, "nvmlDeviceGetPcieReplayCounter")
        return self._pcie(card, self.clock())

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        card = self._card(handle, "nvmlDeviceGetFanSpeed")
        if not self.model.fan:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return self._state(card.index)["fan"]

    def nvmlEventSetCreate(self) -> SimEventSet:
        self._check_init()
        return SimEventSet()

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: SimEventSet) -> None:
        card = self._card(handle, "nvmlDeviceRegisterEvents")
        if eventTypes & ~self.nvmlEventTypeXidCriticalError:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        eventSet.handles.add(card.index)

    def nvmlEventSetWait_v2(self, eventSet: SimEventSet, timeoutms: int) -> c_nvmlEventData_t:
        self._check_init()
        if self.eventfail_until is not None:
            if self.clock() < self.eventfail_until:
                raise NVMLError(self.NVML_ERROR_UNKNOWN)
            self.eventfail_until = None
        for position, (index, xid) in enumerate(self._events):
            if index in eventSet.handles:
                del self._events[position]
                return c_nvmlEventData_t(self._handles[index], self.nvmlEventTypeXidCriticalError, xid)
        raise NVMLError(self.NVML_ERROR_TIMEOUT)

    def nvmlEventSetWait(self, eventSet: SimEventSet, timeoutms: int) -> c_nvmlEventData_t:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet: SimEventSet) -> None:
        self._check_init()
        eventSet.handles.clear()
