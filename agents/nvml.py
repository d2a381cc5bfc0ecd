"""A thin collector over the `pynvml` module API: one sample dict per GPU, per interval.

The collector never imports NVML itself beyond `import pynvml` as a default: it is handed the module object, so the
simulator (`agents.simulate`) and the tests swap in a fake at the pynvml function boundary and everything above it
runs the same code as on a real host.

Rules:
- Every NVML call is wrapped. `NVMLError` (NOT_SUPPORTED on a consumer card's ECC, FUNCTION_NOT_FOUND on an old
  driver, GPU_IS_LOST on a card that fell off the bus, ...) makes that field ABSENT from the sample, never a crash.
  A call that answered NOT_SUPPORTED once is not asked again in this process.
- A card whose calls answer GPU_IS_LOST carries `"gpu_lost": true`.
- XIDs come from an NVML event set (`nvmlEventTypeXidCriticalError`), drained completely each interval into the
  card's `xid_errors` (the XIDs since the last report). A card that could not be registered for events has no
  `xid_errors` field. When the event wait itself fails with anything but NVML_ERROR_TIMEOUT, every card's sample
  carries `"event_wait_failed": true` for that interval (the platform marks them unhealthy until a clean report).
- No library, no driver, or zero GPUs at start: `NvmlUnavailable` with a one-line message (the CLI exits 3).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("suanli.agent.nvml")

MIB = 1024 * 1024

# NVML's clock event ("throttle") reason bits, decoded into the names the platform's health rules use.
THROTTLE_REASON_NAMES: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

# Fallbacks for the pynvml constants, should a module (or a fake) not define one. Values from nvml.h.
_DEFAULTS = {
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_TEMPERATURE_GPU": 0,
    "NVML_CLOCK_SM": 1,
    "NVML_CLOCK_MEM": 2,
    "NVML_SINGLE_BIT_ECC": 0,
    "NVML_DOUBLE_BIT_ECC": 1,
    "NVML_VOLATILE_ECC": 0,
    "NVML_AGGREGATE_ECC": 1,
    "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS": 0,
    "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR": 1,
    "nvmlEventTypeXidCriticalError": 0x8,
}

MAX_EVENTS_PER_DRAIN = 4096


class NvmlUnavailable(Exception):
    """NVML cannot be used on this host: no library, no driver, or no GPU. The message is one line for a human."""


def decode_throttle_reasons(mask: int) -> list[str]:
    """The names of the bits set in an NVML clock event reason mask, lowest first; unknown bits as `unknown_0x..`."""
    names = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            names.append(THROTTLE_REASON_NAMES.get(bit, f"unknown_0x{bit:x}"))
        bit <<= 1
    return names


def _handle_key(handle: Any) -> Any:
    """A hashable identity for a device handle: the address for a ctypes pointer (real pynvml), else the object."""
    if isinstance(handle, ctypes._Pointer):
        return ("ptr", ctypes.cast(handle, ctypes.c_void_p).value)
    try:
        hash(handle)
    except TypeError:
        return ("id", id(handle))
    return handle


class _Absent(Exception):
    """Raised inside the collector when a field cannot be read; the field is left out of the sample."""


class Collector:
    """Reads every GPU through an NVML module object (`pynvml` or a fake with the same functions)."""

    def __init__(self, nvml: Any = None, *, event_timeout_ms: int = 20):
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:  # the nvidia-ml-py package is missing
                raise NvmlUnavailable("the pynvml module is not installed (pip install nvidia-ml-py)") from exc
        self.nvml = nvml
        self.event_timeout_ms = event_timeout_ms
        self._error_cls = getattr(nvml, "NVMLError", Exception)
        self._handles: list[Any] = []
        self._static: list[dict[str, Any]] = []
        self._by_handle: dict[Any, int] = {}
        self._by_uuid: dict[str, int] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._warned: set[tuple[int, str]] = set()
        self._event_set: Any = None
        self._registered: set[int] = set()
        self._register_unsupported: set[int] = set()
        self._lost: set[int] = set()
        self._started = False

    # -- constants and calls ---------------------------------------------------------------------------------

    def _const(self, name: str) -> Any:
        return getattr(self.nvml, name, _DEFAULTS.get(name))

    def _is(self, exc: BaseException, name: str) -> bool:
        return getattr(exc, "value", None) == self._const(name)

    def _call(self, index: int, fn_name: str, *args: Any) -> Any:
        """Call `fn_name` for card `index`; raise `_Absent` if the field cannot be had (and remember why)."""
        if (index, fn_name) in self._unsupported:
            raise _Absent(fn_name)
        fn = getattr(self.nvml, fn_name, None)
        if fn is None:
            self._unsupported.add((index, fn_name))
            raise _Absent(fn_name)
        try:
            return fn(*args)
        except self._error_cls as exc:
            if self._is(exc, "NVML_ERROR_NOT_SUPPORTED") or self._is(exc, "NVML_ERROR_FUNCTION_NOT_FOUND"):
                self._unsupported.add((index, fn_name))
                log.debug("GPU %s: %s not supported", index, fn_name)
            elif self._is(exc, "NVML_ERROR_GPU_IS_LOST"):
                self._lost.add(index)
            elif (index, fn_name) not in self._warned:
                self._warned.add((index, fn_name))
                log.warning("GPU %s: %s failed: %s", index, fn_name, exc)
            raise _Absent(fn_name) from exc
        except Exception as exc:  # a binding bug must cost one field, not the agent
            if (index, fn_name) not in self._warned:
                self._warned.add((index, fn_name))
                log.warning("GPU %s: %s raised %s: %s", index, fn_name, type(exc).__name__, exc)
            raise _Absent(fn_name) from exc

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise NVML, find the cards, read what never changes, register for XID events."""
        try:
            self.nvml.nvmlInit()
            count = int(self.nvml.nvmlDeviceGetCount())
        except self._error_cls as exc:
            raise NvmlUnavailable(f"NVML is not available: {exc} (is the NVIDIA driver installed and loaded?)") from exc
        except OSError as exc:
            raise NvmlUnavailable(f"NVML is not available: {exc}") from exc
        if count <= 0:
            self._shutdown()
            raise NvmlUnavailable("NVML found no GPU on this host")
        handles = []
        for index in range(count):
            try:
                handles.append(self.nvml.nvmlDeviceGetHandleByIndex(index))
            except self._error_cls as exc:
                self._shutdown()
                raise NvmlUnavailable(f"NVML cannot open GPU {index}: {exc}") from exc
        self._handles = handles
        self._started = True
        self._static = []
        for index, handle in enumerate(handles):
            info: dict[str, Any] = {"index": index}
            for key, fn in (
                ("uuid", "nvmlDeviceGetUUID"),
                ("name", "nvmlDeviceGetName"),
                ("serial", "nvmlDeviceGetSerial"),
            ):
                try:
                    info[key] = _text(self._call(index, fn, handle))
                except _Absent:
                    pass
            try:
                info["memory_total_mb"] = int(self._call(index, "nvmlDeviceGetMemoryInfo", handle).total) // MIB
            except _Absent:
                pass
            if "uuid" not in info:
                self.close()
                raise NvmlUnavailable(f"NVML cannot read the UUID of GPU {index}")
            self._static.append(info)
            self._by_handle[_handle_key(handle)] = index
            self._by_uuid[info["uuid"]] = index
        self._setup_events()

    def _shutdown(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:  # shutting down must never fail the caller
            log.debug("nvmlShutdown: %s", exc)

    def close(self) -> None:
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except Exception as exc:
                log.debug("nvmlEventSetFree: %s", exc)
            self._event_set = None
        if self._started:
            self._shutdown()
            self._started = False

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def count(self) -> int:
        return len(self._handles)

    def inventory(self) -> list[dict[str, Any]]:
        """What enrolment sends: index, uuid, name, memory_total_mb (and serial where the card has one)."""
        return [dict(info) for info in self._static]

    def driver_version(self) -> str | None:
        try:
            return _text(self.nvml.nvmlSystemGetDriverVersion())
        except Exception:
            return None

    # -- simulator hooks (absent on real pynvml) --------------------------------------------------------------

    def tick(self) -> None:
        """Let a simulated NVML re-read its fault file; a no-op on real NVML."""
        hook: Callable[[], None] | None = getattr(self.nvml, "suanli_tick", None)
        if hook is not None:
            hook()

    def silent(self) -> bool:
        """True while a simulated host is 'silent' (the agent neither collects nor sends); always False for NVML."""
        hook: Callable[[], bool] | None = getattr(self.nvml, "suanli_silent", None)
        return bool(hook()) if hook is not None else False

    # -- XID events ---------------------------------------------------------------------------------------

    def _setup_events(self) -> None:
        if self._event_set is None:
            create = getattr(self.nvml, "nvmlEventSetCreate", None)
            if create is None:
                return
            try:
                self._event_set = create()
            except Exception as exc:
                self._warn_once(
                    -1, "nvmlEventSetCreate", "cannot create an NVML event set, XIDs are not watched: %s", exc
                )
                return
        xid_type = self._const("nvmlEventTypeXidCriticalError")
        for index, handle in enumerate(self._handles):
            if index in self._registered or index in self._register_unsupported:
                continue
            try:
                self.nvml.nvmlDeviceRegisterEvents(handle, xid_type, self._event_set)
                self._registered.add(index)
            except Exception as exc:
                if self._is(exc, "NVML_ERROR_NOT_SUPPORTED"):
                    self._register_unsupported.add(index)
                self._warn_once(index, "nvmlDeviceRegisterEvents", "GPU %s: cannot watch XID events: %s", index, exc)

    def _warn_once(self, index: int, key: str, message: str, *args: Any) -> None:
        if (index, key) not in self._warned:
            self._warned.add((index, key))
            log.warning(message, *args)

    def _event_index(self, data: Any) -> int | None:
        device = getattr(data, "device", None)
        if device is None:
            return None
        index = self._by_handle.get(_handle_key(device))
        if index is not None:
            return index
        try:  # a different handle object for the same card
            return self._by_uuid.get(_text(self.nvml.nvmlDeviceGetUUID(device)))
        except Exception:
            return None

    def drain_xids(self) -> tuple[dict[int, list[int]], bool]:
        """Every pending XID per card index, and whether the event wait itself failed."""
        xids: dict[int, list[int]] = {i: [] for i in self._registered}
        if self._event_set is None or len(self._registered) < len(self._handles):
            self._setup_events()
            xids = {i: xids.get(i, []) for i in self._registered}
        if self._event_set is None:
            return xids, False
        xid_type = self._const("nvmlEventTypeXidCriticalError")
        for _ in range(MAX_EVENTS_PER_DRAIN):
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._event_set, self.event_timeout_ms)
            except self._error_cls as exc:
                if self._is(exc, "NVML_ERROR_TIMEOUT"):
                    return xids, False
                log.error("NVML event wait failed, XIDs cannot be watched: %s", exc)
                return xids, True
            except Exception as exc:
                log.error("NVML event wait failed, XIDs cannot be watched: %s", exc)
                return xids, True
            if int(getattr(data, "eventType", 0)) & xid_type == 0:
                continue
            xid = int(getattr(data, "eventData", 0))
            index = self._event_index(data)
            if index is None:
                # An XID NVML could not tie to a card: better every card flagged than a fatal error missed.
                log.warning("XID %s on an unknown device: reported on every card", xid)
                for card in xids:
                    xids[card].append(xid)
            else:
                xids.setdefault(index, []).append(xid)
                log.warning("GPU %s: XID %s", index, xid)
        log.warning("more than %s XID events pending; the rest are read next interval", MAX_EVENTS_PER_DRAIN)
        return xids, False

    # -- sampling -----------------------------------------------------------------------------------------

    def collect(self) -> list[dict[str, Any]]:
        """One sample per GPU, in index order. Fields a card cannot give are absent."""
        if not self._started:
            raise RuntimeError("Collector.start() first")
        xids, wait_failed = self.drain_xids()
        samples = []
        for index, handle in enumerate(self._handles):
            sample = self._sample(index, handle)
            if index in xids:
                sample["xid_errors"] = xids[index]
            if wait_failed:
                sample["event_wait_failed"] = True
            samples.append(sample)
        return samples

    def _sample(self, index: int, handle: Any) -> dict[str, Any]:
        static = self._static[index]
        s: dict[str, Any] = {"uuid": static["uuid"], "index": index}
        if "name" in static:
            s["name"] = static["name"]
        self._lost.discard(index)
        call = self._call
        c = self._const

        try:
            util = call(index, "nvmlDeviceGetUtilizationRates", handle)
            s["utilization_pct"] = _pct(util.gpu)
            s["memory_util_pct"] = _pct(util.memory)
        except _Absent:
            pass
        try:
            mem = call(index, "nvmlDeviceGetMemoryInfo", handle)
            s["memory_used_mb"] = int(mem.used) // MIB
            s["memory_total_mb"] = int(mem.total) // MIB
        except _Absent:
            pass
        temp_sensor = c("NVML_TEMPERATURE_GPU")
        _put(s, "temperature_c", lambda: int(call(index, "nvmlDeviceGetTemperature", handle, temp_sensor)))
        _put(s, "power_w", lambda: round(call(index, "nvmlDeviceGetPowerUsage", handle) / 1000, 1))
        _put(s, "power_limit_w", lambda: round(call(index, "nvmlDeviceGetEnforcedPowerLimit", handle) / 1000, 1))
        _put(s, "sm_clock_mhz", lambda: int(call(index, "nvmlDeviceGetClockInfo", handle, c("NVML_CLOCK_SM"))))
        _put(s, "mem_clock_mhz", lambda: int(call(index, "nvmlDeviceGetClockInfo", handle, c("NVML_CLOCK_MEM"))))
        ecc = "nvmlDeviceGetTotalEccErrors"
        single, double = c("NVML_SINGLE_BIT_ECC"), c("NVML_DOUBLE_BIT_ECC")
        volatile, aggregate = c("NVML_VOLATILE_ECC"), c("NVML_AGGREGATE_ECC")
        _put(s, "ecc_sbe", lambda: int(call(index, ecc, handle, single, volatile)))
        _put(s, "ecc_dbe", lambda: int(call(index, ecc, handle, double, volatile)))
        _put(s, "ecc_sbe_aggregate", lambda: int(call(index, ecc, handle, single, aggregate)))
        _put(s, "ecc_dbe_aggregate", lambda: int(call(index, ecc, handle, double, aggregate)))
        pages = "nvmlDeviceGetRetiredPages"
        sbe_cause = c("NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS")
        dbe_cause = c("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR")
        _put(s, "retired_pages_sbe", lambda: len(call(index, pages, handle, sbe_cause)))
        _put(s, "retired_pages_dbe", lambda: len(call(index, pages, handle, dbe_cause)))
        _put(s, "retired_pages_pending", lambda: bool(call(index, "nvmlDeviceGetRetiredPagesPendingStatus", handle)))
        try:
            corrected, uncorrected, pending, failed = call(index, "nvmlDeviceGetRemappedRows", handle)
            s["remapped_rows_correctable"] = int(corrected)
            s["remapped_rows_uncorrectable"] = int(uncorrected)
            s["remap_pending"] = bool(pending)
            s["remap_failed"] = bool(failed)
        except _Absent:
            pass
        _put(s, "throttle_reasons", lambda: decode_throttle_reasons(self._throttle_mask(index, handle)))
        _put(s, "pcie_replay_count", lambda: int(call(index, "nvmlDeviceGetPcieReplayCounter", handle)))
        # NVML documents that the intended fan speed "may exceed 100%"; the platform takes 0..100.
        _put(s, "fan_pct", lambda: _pct(call(index, "nvmlDeviceGetFanSpeed", handle)))
        if index in self._lost:
            s["gpu_lost"] = True
        return s

    def _throttle_mask(self, index: int, handle: Any) -> int:
        # The newer name first; drivers before R535 only have the "throttle" one.
        try:
            return int(self._call(index, "nvmlDeviceGetCurrentClocksEventReasons", handle))
        except _Absent:
            if (index, "nvmlDeviceGetCurrentClocksEventReasons") not in self._unsupported:
                raise
        return int(self._call(index, "nvmlDeviceGetCurrentClocksThrottleReasons", handle))


def _put(sample: dict[str, Any], key: str, read: Callable[[], Any]) -> None:
    try:
        sample[key] = read()
    except _Absent:
        pass


def _pct(value: Any) -> int:
    return max(0, min(100, int(value)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
