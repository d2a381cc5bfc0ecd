"""A simulated NVML: an object with pynvml's function names, constants, error class and return shapes.

`SimulatedNVML(count, model, seed)` stands in for the `pynvml` module, so `--simulate N` goes through exactly the
collector code that runs on a real host: only the module object differs.

- Cards: N cards of one catalogue model (`MODELS`), with stable UUIDs (`GPU-xxxxxxxx-xxxx-...`) and serials derived
  from the seed and the card index, so a restarted simulated host is the same host (the default seed is the host name).
- Load: a training-job pattern, deterministic for a seed and a time. Time runs in 30-minute blocks; a block is a job on
  every card (~70 %), a job on half the cards (~15 %) or idle. A job holds ~96 % utilisation with noise, dips for a
  checkpoint every 10 minutes, and fills ~88 % of memory; temperature follows the utilisation of the last minute,
  power and clocks follow utilisation, power-capped when power nears the limit.
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

import hashlib
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("suanli.agent.simulate")

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuModel:
    key: str
    name: str  # as NVML reports it
    memory_mib: int
    power_limit_w: int
    idle_power_w: int
    max_sm_mhz: int
    idle_sm_mhz: int
    mem_mhz: int
    load_temp_c: int
    fan: bool
    ecc: bool
    row_remap: bool
    page_retirement: bool


MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        GpuModel("h100", "NVIDIA H100 80GB HBM3", 81559, 700, 72, 1980, 345, 2619, 68, False, True, True, False),
        GpuModel("h200", "NVIDIA H200", 143771, 700, 76, 1980, 345, 3201, 67, False, True, True, False),
        GpuModel("a100", "NVIDIA A100-SXM4-80GB", 81920, 400, 62, 1410, 210, 1593, 64, False, True, True, False),
        GpuModel("a800", "NVIDIA A800-SXM4-80GB", 81920, 400, 62, 1410, 210, 1593, 64, False, True, True, False),
        GpuModel("h20", "NVIDIA H20", 97871, 400, 64, 1980, 345, 2619, 60, False, True, True, False),
        GpuModel("l40s", "NVIDIA L40S", 46068, 350, 36, 2520, 210, 9001, 72, False, True, True, False),
        GpuModel("rtx4090", "NVIDIA GeForce RTX 4090", 24564, 450, 22, 2520, 210, 10501, 66, True, False, False, False),
    )
}
_ALIASES = {"h100sxm": "h100", "h100sxm5": "h100", "4090": "rtx4090", "geforcertx4090": "rtx4090"}


def find_model(name: str) -> GpuModel:
    """A catalogue model by key (`h100`), alias (`H100 SXM`, `RTX 4090`) or NVML name (`NVIDIA H200`)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    key = _ALIASES.get(key, key)
    if key in MODELS:
        return MODELS[key]
    for model in MODELS.values():
        if re.sub(r"[^a-z0-9]", "", model.name.lower()) in (key, "nvidia" + key):
            return model
    raise ValueError(f"unknown GPU model {name!r}; choose one of: {', '.join(MODELS)}")


# -- pynvml's error class and return shapes -----------------------------------------------------------------


class NVMLError(Exception):
    """Shaped like pynvml.NVMLError: `.value` is the NVML_ERROR_* code."""

    _strings = {
        1: "Uninitialized",
        2: "Invalid Argument",
        3: "Not Supported",
        9: "Driver Not Loaded",
        10: "Timeout",
        12: "NVML Shared Library Not Found",
        13: "Function Not Found",
        15: "GPU is lost",
        999: "Unknown Error",
    }

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._strings.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


class c_nvmlUtilization_t:
    __slots__ = ("gpu", "memory")

    def __init__(self, gpu: int, memory: int):
        self.gpu, self.memory = gpu, memory


class c_nvmlMemory_t:
    __slots__ = ("total", "free", "used")

    def __init__(self, total: int, free: int, used: int):
        self.total, self.free, self.used = total, free, used


class c_nvmlEventData_t:
    __slots__ = ("device", "eventType", "eventData", "gpuInstanceId", "computeInstanceId")

    def __init__(self, device: Any, event_type: int, event_data: int):
        self.device, self.eventType, self.eventData = device, event_type, event_data
        self.gpuInstanceId = self.computeInstanceId = 0xFFFFFFFF


class SimHandle:
    """A device handle (pynvml's is a ctypes pointer; only its identity matters to callers)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"<SimHandle {self.index}>"


class SimEventSet:
    __slots__ = ("handles",)

    def __init__(self) -> None:
        self.handles: set[int] = set()


# Field groups a `nosupport:` fault can switch off, by the NVML functions behind them.
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "utilization": ("nvmlDeviceGetUtilizationRates",),
    "memory": ("nvmlDeviceGetMemoryInfo",),
    "temperature": ("nvmlDeviceGetTemperature",),
    "power": ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit"),
    "clocks": ("nvmlDeviceGetClockInfo",),
    "ecc": ("nvmlDeviceGetTotalEccErrors",),
    "retired_pages": ("nvmlDeviceGetRetiredPages", "nvmlDeviceGetRetiredPagesPendingStatus"),
    "remapped_rows": ("nvmlDeviceGetRemappedRows",),
    "throttle": ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
    "pcie": ("nvmlDeviceGetPcieReplayCounter",),
    "fan": ("nvmlDeviceGetFanSpeed",),
    "serial": ("nvmlDeviceGetSerial",),
    "events": ("nvmlDeviceRegisterEvents",),
}

_FAULT_RE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<value>[A-Za-z0-9_.]+))?(?:@(?P<card>\d+))?$")
_FAULT_KINDS = {"xid", "dbe", "sbe", "hot", "pcie", "lost", "nosupport", "eventfail", "silent", "nodriver", "clear"}
_NEEDS_VALUE = {"xid", "pcie", "nosupport", "silent"}


@dataclass(frozen=True)
class Fault:
    kind: str
    value: str | None = None
    card: int | None = None

    @property
    def number(self) -> float:
        return float(self.value) if self.value is not None else 0.0


def parse_fault(spec: str) -> Fault:
    """`xid:79@3` → Fault("xid", "79", 3). Raises ValueError with the grammar on anything else."""
    match = _FAULT_RE.match(spec.strip())
    if not match or match["kind"] not in _FAULT_KINDS:
        raise ValueError(
            f"bad fault {spec!r}: expected one of xid:N@I, dbe@I, sbe:N@I, hot@I, pcie:N@I, lost@I, nosupport:FIELD@I, "
            "eventfail[:S], silent:S, nodriver, clear[@I]"
        )
    fault = Fault(match["kind"], match["value"], int(match["card"]) if match["card"] is not None else None)
    if fault.kind in _NEEDS_VALUE and fault.value is None:
        raise ValueError(f"bad fault {spec!r}: {fault.kind} needs a value ({fault.kind}:VALUE)")
    if fault.kind in {"xid", "sbe", "pcie", "silent", "eventfail"} and fault.value is not None:
        try:
            fault.number  # noqa: B018 - validates
        except ValueError:
            raise ValueError(f"bad fault {spec!r}: {fault.value!r} is not a number") from None
    if fault.kind == "nosupport" and fault.value not in FIELD_GROUPS and not fault.value.startswith("nvml"):
        raise ValueError(f"bad fault {spec!r}: unknown field group; choose from {', '.join(FIELD_GROUPS)}")
    return fault


class FaultFile:
    """A JSON-lines file of fault specs, re-read on every `poll()`; each line is returned once."""

    def __init__(self, path: str):
        self.path = path
        self._seen: set[tuple[int, str]] = set()

    def poll(self) -> list[Fault]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read the fault file %s: %s", self.path, exc)
            return []
        faults = []
        for number, raw in enumerate(lines):
            line = raw.strip()
            if not line or (number, line) in self._seen:
                continue
            self._seen.add((number, line))
            try:
                item = json.loads(line)
                spec = item["fault"] if isinstance(item, dict) else item
                if not isinstance(spec, str):
                    raise ValueError("not a string")
                faults.append(parse_fault(spec))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("fault file %s line %s ignored (%s): %s", self.path, number + 1, exc, line)
        return faults


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (a cheap, seedable, stateless noise source)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class _Card:
    index: int
    uuid: str
    serial: str
    offset_c: float
    sbe_aggregate: int
    sbe: int = 0
    dbe: int = 0
    dbe_aggregate: int = 0
    remapped_correctable: int = 0
    remapped_uncorrectable: int = 0
    remap_pending: bool = False
    retired_sbe: list[int] = field(default_factory=list)
    retired_dbe: list[int] = field(default_factory=list)
    retire_pending: bool = False
    hot: bool = False
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)
    pcie_base: int = 0
    pcie_rate: float = 0.0
    pcie_since: float = 0.0


BLOCK_S = 1800
CHECKPOINT_EVERY_S = 600
CHECKPOINT_S = 25


class SimulatedNVML:
    """The fake `pynvml` module. Every function checks `nvmlInit` was called, as NVML does."""

    NVMLError = NVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_SINGLE_BIT_ECC = 0
    NVML_DOUBLE_BIT_ECC = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
    nvmlEventTypeXidCriticalError = 0x8
    nvmlClocksEventReasonGpuIdle = 0x1
    nvmlClocksEventReasonSwPowerCap = 0x4
    nvmlClocksEventReasonHwSlowdown = 0x8
    nvmlClocksEventReasonSwThermalSlowdown = 0x20
    nvmlClocksEventReasonHwThermalSlowdown = 0x40
    nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80

    def __init__(
        self,
        count: int = 8,
        model: str | GpuModel = "h100",
        seed: str | int | None = None,
        *,
        faults: list[str | Fault] | None = None,
        fault_file: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.model = model if isinstance(model, GpuModel) else find_model(model)
        self.seed = str(seed if seed is not None else socket.gethostname())
        self.clock = clock
        self.nodriver = False
        self.silent_until = 0.0
        self.eventfail_until: float | None = None
        self._initialised = 0
        self._events: list[tuple[int, int]] = []
        self._handles = [SimHandle(i) for i in range(count)]
        self.cards = [self._make_card(i) for i in range(count)]
        self._fault_file = FaultFile(fault_file) if fault_file else None
        self._version = 0
        self._cache: dict[int, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        for spec in faults or []:
            self.inject(spec)

    def _make_card(self, index: int) -> _Card:
        digest = hashlib.blake2b(f"suanli-sim:{self.seed}:{index}".encode(), digest_size=16).hexdigest()
        uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        serial = str(int(digest[:12], 16) % 10**13).zfill(13)
        sbe = int(_unit(self.seed, index, "sbe") * 4) if self.model.ecc else 0
        return _Card(index, uuid, serial, offset_c=_unit(self.seed, index, "temp") * 5 - 2, sbe_aggregate=sbe)

    # -- faults -------------------------------------------------------------------------------------------------

    def inject(self, spec: str | Fault) -> None:
        fault = parse_fault(spec) if isinstance(spec, str) else spec
        now = self.clock()
        if fault.card is not None and not 0 <= fault.card < len(self.cards):
            raise ValueError(f"fault {fault}: there is no card {fault.card} (cards 0..{len(self.cards) - 1})")
        cards = [self.cards[fault.card]] if fault.card is not None else self.cards
        log.info("simulated fault injected: %s", fault)
        self._version += 1
        if fault.kind == "xid":
            self._events.extend((card.index, int(fault.number)) for card in cards)
        elif fault.kind == "dbe":
            for card in cards:
                card.dbe += 1
                card.dbe_aggregate += 1
                if self.model.row_remap:
                    card.remapped_uncorrectable += 1
                    card.remap_pending = True
                elif self.model.page_retirement:
                    card.retired_dbe.append(0x1000 + len(card.retired_dbe))
                    card.retire_pending = True
        elif fault.kind == "sbe":
            for card in cards:
                card.sbe += int(fault.number)
                card.sbe_aggregate += int(fault.number)
        elif fault.kind == "hot":
            for card in cards:
                card.hot = True
        elif fault.kind == "pcie":
            for card in cards:
                card.pcie_base = self._pcie(card, now)
                card.pcie_rate, card.pcie_since = fault.number, now
        elif fault.kind == "lost":
            for card in cards:
                card.lost = True
        elif fault.kind == "nosupport":
            names = FIELD_GROUPS.get(fault.value or "", (fault.value,))
            for card in cards:
                card.unsupported.update(n for n in names if n)
        elif fault.kind == "eventfail":
            self.eventfail_until = now + fault.number if fault.value is not None else float("inf")
        elif fault.kind == "silent":
            self.silent_until = now + fault.number
        elif fault.kind == "nodriver":
            self.nodriver = True
        elif fault.kind == "clear":
            self.eventfail_until = None
            for card in cards:
                card.pcie_base = self._pcie(card, now)
                card.pcie_rate = 0.0
                card.hot = card.lost = card.remap_pending = card.retire_pending = False
                card.unsupported.clear()
                card.sbe = card.dbe = 0

    def suanli_tick(self) -> None:
        """Called by the agent once per interval: apply the fault file's new lines."""
        if self._fault_file is not None:
            for fault in self._fault_file.poll():
                try:
                    self.inject(fault)
                except ValueError as exc:
                    log.warning("%s", exc)

    def suanli_silent(self) -> bool:
        return self.clock() < self.silent_until

    # -- the load model -----------------------------------------------------------------------------------------

    def _busy(self, index: int, t: float) -> bool:
        block = int(t // BLOCK_S)
        r = _unit(self.seed, "block", block)
        if r < 0.70:
            return True
        if r < 0.85:
            return index < max(1, len(self.cards) // 2)
        return False

    def utilization(self, index: int, t: float) -> float:
        second = int(t)
        if not self._busy(index, second):
            return 0.0
        phase = second % CHECKPOINT_EVERY_S
        if phase < CHECKPOINT_S:  # checkpoint: the cards wait on storage
            return 4 + 8 * _unit(self.seed, index, second, "ckpt")
        if second % BLOCK_S < 60:  # a job starting: data loading, compilation
            return 25 + 20 * _unit(self.seed, index, second, "warm")
        return max(0.0, min(100.0, 96 + 6 * (_unit(self.seed, index, second, "u") - 0.5)))

    def _recent_util(self, index: int, t: float) -> float:
        return sum(self.utilization(index, t - k * 10) for k in range(6)) / 6

    def _state(self, index: int) -> dict[str, Any]:
        """The card's readings for the current second (cached: one sample reads it a dozen times)."""
        t = self.clock()
        key = (index, int(t), self._version)
        cached = self._cache.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        state = self._compute_state(index, t)
        self._cache[index] = (key, state)
        return state

    def _compute_state(self, index: int, t: float) -> dict[str, Any]:
        m, card = self.model, self.cards[index]
        util = self.utilization(index, t)
        busy = self._busy(index, t)
        recent = self._recent_util(index, t)
        noise = _unit(self.seed, index, int(t), "n") - 0.5
        ambient = 30 + card.offset_c
        temp = ambient + (m.load_temp_c - ambient) * recent / 100 + noise * 2
        power = m.idle_power_w + (m.power_limit_w * 0.93 - m.idle_power_w) * (util / 100) ** 1.1 + noise * 10
        sm = m.max_sm_mhz - int(30 * _unit(self.seed, index, int(t), "clk")) if util > 1 else m.idle_sm_mhz
        mask = 0 if util > 1 else self.nvmlClocksEventReasonGpuIdle
        if power > m.power_limit_w * 0.95:
            mask |= self.nvmlClocksEventReasonSwPowerCap
        if card.hot:
            temp, sm = 95.0, int(m.max_sm_mhz * 0.55)
            power = min(power, m.power_limit_w * 0.7)
            mask = (mask & ~self.nvmlClocksEventReasonGpuIdle) | self.nvmlClocksEventReasonHwThermalSlowdown
        block = int(t // BLOCK_S)
        used_frac = (0.84 + 0.08 * _unit(self.seed, index, block, "mem")) if busy else 0.0
        used = int(m.memory_mib * used_frac) * MIB + 512 * MIB
        return {
            "util": int(round(util)),
            "mem_util": int(round(util * 0.45 * (0.9 + 0.2 * _unit(self.seed, index, int(t), "mu")))),
            "used": used,
            "temp": int(round(temp)),
            "power_mw": int(max(power, 1) * 1000),
            "sm": sm,
            "mem_clock": m.mem_mhz if util > 1 or m.mem_mhz < 5000 else 405,  # GDDR clocks down when idle, HBM does not
            "mask": mask,
            "fan": max(30, min(100, int(30 + (temp - 35) * 1.4))),
        }

    def _pcie(self, card: _Card, now: float) -> int:
        return card.pcie_base + int(card.pcie_rate * max(0.0, now - card.pcie_since) / 60)

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
