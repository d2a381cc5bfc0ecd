"""The simulated cards: each card's identity and injected conditions (`_Card`), the faults applied to them, and the
training-job load model that turns a seed and a time into readings (see `agents.simulate` for the model).

`SimulatedCards` holds pynvml's constants and that state; `agents.simulate.SimulatedNVML` adds pynvml's functions.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agents.sim_catalogue import MIB, GpuModel, NVMLError, SimHandle, find_model
from agents.sim_faults import FIELD_GROUPS, Fault, FaultFile, parse_fault
from agents.sim_load import LoadSource

log = logging.getLogger("suanli.agent.simulate")


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


class SimulatedCards:
    """The cards, their faults and their load; pynvml's constants, as class attributes like the module's."""

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
        load_curve: str | None = None,
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
        # The uuids of the cards a workload runs on, when a workload runtime is attached (`follow_workloads`): the
        # load then follows the workloads (a card in a running one is busy, any other idle) instead of the pattern.
        self._workload_cards: Callable[[], Iterable[str]] | None = None
        self._workload_seen: tuple[int, frozenset[str]] = (-1, frozenset())
        # A utilisation curve (`--load-curve`, agents/sim_load.py): a busy card reads it instead of the job's shape.
        self.load = LoadSource(load_curve, clock) if load_curve else None
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
        """Called by the agent once per interval: apply the fault file's new lines, re-read a changed load curve."""
        if self.load is not None:
            self.load.poll()
        if self._fault_file is not None:
            for fault in self._fault_file.poll():
                try:
                    self.inject(fault)
                except ValueError as exc:
                    log.warning("%s", exc)

    def suanli_silent(self) -> bool:
        return self.clock() < self.silent_until

    # -- the load model -----------------------------------------------------------------------------------------

    def follow_workloads(self, cards: Callable[[], Iterable[str]]) -> None:
        """Make the load follow the workloads: `cards()` names the uuids of the cards running one now (read at
        most once a second). A card in none reads idle (0 %, memory free, idle clocks and power)."""
        self._workload_cards = cards
        self._cache.clear()  # readings taken before (the collector's start) no longer hold for this second

    def _in_workload(self, index: int, t: float) -> bool:
        second = int(t)
        if self._workload_seen[0] != second:
            try:
                uuids = frozenset(self._workload_cards())
            except Exception:  # the runtime could not say: keep what it said last
                log.exception("cannot read which cards run a workload")
                uuids = self._workload_seen[1]
            self._workload_seen = (second, uuids)
        return self.cards[index].uuid in self._workload_seen[1]

    def _busy(self, index: int, t: float) -> bool:
        if self._workload_cards is not None:
            return self._in_workload(index, t)
        if self.load is not None:  # no workloads to follow: every card runs the curve
            return True
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
        if self.load is not None:  # the curve, with a little noise (mean on the curve), no checkpoints or warm-up
            value = self.load.utilization(t) + 3 * (_unit(self.seed, index, second, "curve") - 0.5)
            return max(0.0, min(100.0, value))
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
