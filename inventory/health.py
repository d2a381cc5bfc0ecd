"""GPU health rules: one agent sample (plus a little remembered state) in, a health verdict out.

This module is the one place the rules live; README.md's "GPU health" section points here.

Failed and latched (stays until a provider or staff clears it after a reset or repair):
- an XID in FATAL_XIDS (NVIDIA's XID catalogue: these need a GPU reset, node reboot or RMA);
- the card is lost (`gpu_lost`: NVML answers GPU_IS_LOST, the card fell off the bus);
- any uncorrectable ECC error (`ecc_dbe` > 0): data corruption cannot be ruled out;
- a row-remapping failure (`remap_failed`): the card ran out of spare rows;
- 60 or more retired pages in all, or 16 or more retired for double-bit errors (NVIDIA's RMA limits).
Failed until the next clean report (a condition, not a latch):
- a row remap or page retirement pending: not allocatable until a GPU reset applies it;
- the NVML event wait failed (`event_wait_failed`): XIDs cannot be watched, so the card cannot be trusted.
Degraded (still allocatable, shown amber):
- thermal slowdown in `throttle_reasons` for THERMAL_SUSTAIN_S or longer;
- PCIe replays faster than PCIE_REPLAYS_PER_MIN per minute: a link going bad.
Healthy: XIDs in APPLICATION_XIDS (13, 31, 43, 45, 68, 109, ...): the user's program faulted, not the card.

`failed` cards are drained and never allocated; `degraded` cards stay allocatable but are shown amber.
A latched failure stays until a provider or staff clears it (after a reset or repair); a condition that is
not latched goes away with the first report that no longer shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

HEALTHY = "healthy"
DEGRADED = "degraded"
FAILED = "failed"

# From NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors): errors whose documented action is a GPU
# reset, node reboot or RMA, and which DCGM's health watches treat as fatal.
FATAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping recording event",
    64: "ECC page retirement or row remapper recording failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
# Raised by a user's program (bad kernel, memory fault, timeout); the card itself stays usable.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 69, 109})

RETIRED_PAGES_LIMIT = 60
RETIRED_DBE_PAGES_LIMIT = 16
PCIE_REPLAYS_PER_MIN = 8
THERMAL_SUSTAIN_S = 60
THERMAL_REASONS = frozenset({"hw_thermal_slowdown", "sw_thermal_slowdown"})


@dataclass
class GpuState:
    """What the rules remember about a card between reports."""

    latched_reason: str = ""
    pcie_replay_count: int | None = None
    pcie_seen_at: datetime | None = None
    thermal_since: datetime | None = None


@dataclass
class Verdict:
    health: str
    reason: str = ""
    latch: bool = False
    state: GpuState = field(default_factory=GpuState)


def _latched_failure(sample: dict[str, Any]) -> str:
    if sample.get("gpu_lost"):
        return "GPU lost: NVML cannot reach the card (fallen off the bus)"
    fatal = [x for x in sample.get("xid_errors") or [] if x in FATAL_XIDS]
    if fatal:
        return f"XID {fatal[0]}: {FATAL_XIDS[fatal[0]]}"
    if (sample.get("ecc_dbe") or 0) > 0:
        return f"uncorrectable ECC errors: {sample['ecc_dbe']}"
    if sample.get("remap_failed"):
        return "row remapping failed"
    retired = (sample.get("retired_pages_sbe") or 0) + (sample.get("retired_pages_dbe") or 0)
    if retired >= RETIRED_PAGES_LIMIT:
        return f"{retired} retired pages (limit {RETIRED_PAGES_LIMIT})"
    if (sample.get("retired_pages_dbe") or 0) >= RETIRED_DBE_PAGES_LIMIT:
        return f"{sample['retired_pages_dbe']} pages retired for double-bit errors (limit {RETIRED_DBE_PAGES_LIMIT})"
    return ""


def _condition_failure(sample: dict[str, Any]) -> str:
    if sample.get("event_wait_failed"):
        return "NVML event wait failed: XIDs cannot be watched"
    if sample.get("remap_pending"):
        return "row remapping pending: GPU reset required"
    if sample.get("retired_pages_pending"):
        return "page retirement pending: GPU reset required"
    return ""


def evaluate(sample: dict[str, Any], previous: GpuState, at: datetime) -> Verdict:
    """The card's health after `sample`, taken at `at`, given what was remembered before it."""
    state = GpuState(latched_reason=previous.latched_reason)

    replays = sample.get("pcie_replay_count")
    pcie_rate = None
    if replays is not None:
        if previous.pcie_replay_count is not None and previous.pcie_seen_at is not None and at > previous.pcie_seen_at:
            minutes = (at - previous.pcie_seen_at).total_seconds() / 60
            pcie_rate = max(0, replays - previous.pcie_replay_count) / minutes
        state.pcie_replay_count, state.pcie_seen_at = replays, at
    else:
        state.pcie_replay_count, state.pcie_seen_at = previous.pcie_replay_count, previous.pcie_seen_at

    thermal = bool(THERMAL_REASONS & set(sample.get("throttle_reasons") or []))
    state.thermal_since = (previous.thermal_since or at) if thermal else None

    latched = _latched_failure(sample)
    if latched:
        state.latched_reason = latched
        return Verdict(FAILED, latched, latch=True, state=state)
    if state.latched_reason:
        return Verdict(FAILED, state.latched_reason, latch=True, state=state)
    condition = _condition_failure(sample)
    if condition:
        return Verdict(FAILED, condition, state=state)
    if state.thermal_since is not None and at - state.thermal_since >= timedelta(seconds=THERMAL_SUSTAIN_S):
        return Verdict(
            DEGRADED,
            f"thermal throttling for {int((at - state.thermal_since).total_seconds())} s",
            state=state,
        )
    if pcie_rate is not None and pcie_rate > PCIE_REPLAYS_PER_MIN:
        return Verdict(DEGRADED, f"PCIe replays at {pcie_rate:.0f}/min (limit {PCIE_REPLAYS_PER_MIN})", state=state)
    return Verdict(HEALTHY, state=state)
