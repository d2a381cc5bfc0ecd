"""A card's memory as the pages show it: used and total in the catalogue's unit.

NVIDIA's catalogue sizes ("L40S 48GB", "H100 80GB") count 1024 MiB to the GB, and nvidia-smi reports MiB, so a
sample's MiB / 1024 is in the same unit as the catalogue. The total is the catalogue's size of the card's model,
not the driver's `memory_total_mb`: the driver reports the memory left after its ECC and firmware reservation
(46068 MiB on an L40S 48GB, which read "/ 45 GB" beside an offer that says 48 GB), while the offer, the catalogue
and the invoice all name the card by its catalogue size. One function for the lease and server pages, so the two
say the same.
"""

from __future__ import annotations

from typing import Any

from inventory.models import Gpu

MIB_PER_GB = 1024


def _mib(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def memory_gb(gpu: Gpu, sample: dict) -> tuple[float | None, float | None]:
    """(used, total) in GB for `gpu` from its `sample` (empty when the page shows no figures): used is None when the
    sample has none; total is the catalogue's size of the card's model."""
    used = _mib(sample.get("memory_used_mb"))
    return (None if used is None else used / MIB_PER_GB), float(gpu.server.gpu_model.memory_gb)
