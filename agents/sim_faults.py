"""The simulator's faults: the `--fault SPEC` grammar (`parse_fault`, see `agents.simulate` for every kind), the
field groups a `nosupport:` fault switches off, and the fault file (`--fault-file`) re-read every interval.

Part of the simulated NVML (`agents.simulate`), which re-exports these names.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

log = logging.getLogger("suanli.agent.simulate")


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
