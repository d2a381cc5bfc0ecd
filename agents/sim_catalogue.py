"""The simulator's catalogue and pynvml's shapes: the GPU models `--model` chooses from (`MODELS`, `find_model`),
and the error class, return structures, device handles and event sets that pynvml hands its callers.

Part of the simulated NVML (`agents.simulate`), which re-exports these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
