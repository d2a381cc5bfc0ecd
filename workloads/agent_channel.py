"""The agent's side of workloads: the desired state served to an agent (with the card-cleaning bookkeeping), and
the workload part of an agent's report, checked and applied; with the volumes of workloads.volumes (per workload
item, the volumes it mounts; at top level, the server's volumes to keep and to wipe; and the agent's reports of
them) and the data-access sessions of workloads.data_access (top-level `data_access`: workload items of their own,
reported back among the `workloads`).

Cleaning: a card named in a workload served to an agent is marked `needs_cleaning`; once it is in no workload of
its server any more, it is stamped with the desired-state version that left it out (`clean_after_version`), and it
becomes allocatable again only when the agent reports it has applied that version (everything of the workload
gone). A card two leases hold at once (a contract and its resale, scheduler/resale.py) is served to the resale while
that holds it, and passes from one lease's workload to the other's only clean: while it still needs cleaning after
another lease (`Gpu.served_lease_id`), it is left out, so it is stamped and cleaned first. A card not reported
clean within SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS is drained for the provider (workloads.checks).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from accounts.errors import InvalidInput
from accounts.inputs import clean_text
from accounts.tenancy import platform_work
from inventory.models import Gpu, Server
from scheduler import services as scheduler
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan
from workloads import data_access, volumes
from workloads.models import Access, DesiredVersion, Workload, WorkloadSpec, WorkloadState

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "a workload spans its lease and the provider's server; an agent reaches only its own server"


# --- desired state, as served to an agent ----------------------------------------------------------------------


def _limits(server: Server, cards: int, disk_gb: int) -> dict[str, Any]:
    """CPU, memory and disk in proportion to the cards a workload holds of its server."""
    share = cards / max(1, server.gpu_count)
    return {
        "cpus": round(server.cpu_cores * share, 2),
        "memory_mb": int(server.ram_gb * 1024 * share),
        "disk_gb": disk_gb or int(server.disk_gb * share),
    }


def host_user(lease_id: int) -> str:
    return f"lease{lease_id}"


def _workload_item(workload: Workload, spec: WorkloadSpec, gpus: list[str], stop_by: datetime | None) -> dict:
    env = dict(spec.env)
    if spec.notebook_token:
        env["JUPYTER_TOKEN"] = spec.notebook_token
    return {
        "id": workload.pk,
        "lease": workload.lease_id,
        "access": spec.access,
        "gpus": gpus,
        "image": spec.image,
        "command": spec.command,
        "env": env,
        "ports": spec.ports,
        "ssh_keys": [key["public_key"] for key in spec.ssh_keys],
        "limits": _limits(workload.server, len(gpus), spec.disk_gb),
        "user": host_user(workload.lease_id) if spec.access == Access.HOST else "root",
        "desired": workload.desired,
        "generation": workload.generation,
        "stop_by": stop_by.isoformat() if stop_by else None,
        "volumes": volumes.spec_volumes(spec, workload.server),
        "owner": str(workload.lease.organization_id),  # the agent mounts only this organisation's volumes
    }


@platform_work(_PLATFORM)
def desired_state_serve(*, server: Server, now: datetime | None = None) -> dict[str, Any]:
    """The desired state of `server` (API.md, Agent side), with its version: what the agent must run now.

    Creates the workload rows of leases that reached this server after they were made (resize, failover), bumps
    the version when the answer differs from the last one served, and then does the cleaning bookkeeping of the
    module docstring in the same transaction. A poll that finds nothing changed writes nothing. Safe to call
    concurrently and repeatedly.
    """
    now = now or timezone.now()
    live = (
        Allocation.objects.filter(server=server, lease__state=LeaseState.ACTIVE, lease__workload_spec__isnull=False)
        .filter(period__contains=now)
        # A contract's card resold now is the resale lease's (scheduler/resale.py): not its own workload's.
        .exclude(Exists(Allocation.objects.filter(backing_id=OuterRef("pk"), period__contains=now)))
        .select_related("gpu")
        .order_by("lease_id", "gpu__index")
    )
    cards: dict[int, list[str]] = defaultdict(list)
    ends: dict[int, list[datetime | None]] = defaultdict(list)
    for allocation in live:
        gpu = allocation.gpu
        if gpu.needs_cleaning and gpu.served_lease_id not in (None, allocation.lease_id):
            # Still in (or not yet cleaned after) another lease's workload: a card passing between a contract and
            # its resale. Left out, it is cleaned, then handed over (module docstring).
            continue
        cards[allocation.lease_id].append(gpu.uuid)
        ends[allocation.lease_id].append(allocation.period.upper)
    workloads = _workloads_for(server, list(cards), now)
    items = []
    for workload in workloads:
        bounds = ends[workload.lease_id]
        stop_by = None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
        items.append(_workload_item(workload, workload.lease.workload_spec, cards[workload.lease_id], stop_by))
    body = {
        "server": server.pk,
        "public_host": server.public_host or server.hostname,
        "port_range": [server.port_range_start, server.port_range_end],
        "workloads": items,
    }
    body["volumes"], body["volumes_to_wipe"] = volumes.desired_volumes(server)
    _volume_moves().desired_apply(body, server)  # volumes moving to or away from this server, and their transfers
    # Data-access sessions (workloads.data_access): workload items without cards or lease, in a list of their own.
    body["data_access"] = data_access.desired_items(server, now)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    row, _ = DesiredVersion.objects.get_or_create(server=server)
    if row.digest == digest:
        # Nothing changed since the last answer, so neither did the cards it hands out: no write on a plain poll.
        return {"version": row.version, **body}
    served = [uuid for uuids in cards.values() for uuid in uuids]
    with transaction.atomic():
        # One writer bumps a given change (the row is locked by the UPDATE; a racing read of the same content finds
        # the digest already stored and leaves the version alone).
        DesiredVersion.objects.filter(server=server).exclude(digest=digest).update(
            version=F("version") + 1, digest=digest
        )
        version = DesiredVersion.objects.values_list("version", flat=True).get(server=server)
        # Cards handed out in a workload must be cleaned after it; a card back in a workload is not cleaned yet.
        Gpu.objects.filter(server=server, uuid__in=served).filter(
            Q(needs_cleaning=False) | Q(clean_after_version__isnull=False)
        ).update(needs_cleaning=True, clean_after_version=None, clean_requested_at=None)
        for lease_id, uuids in cards.items():
            Gpu.objects.filter(server=server, uuid__in=uuids).exclude(served_lease_id=lease_id).update(
                served_lease_id=lease_id
            )
        Gpu.objects.filter(server=server, needs_cleaning=True, clean_after_version__isnull=True).exclude(
            uuid__in=served
        ).update(clean_after_version=version, clean_requested_at=now)
    return {"version": version, **body}


def _volume_moves():
    from workloads import volume_moves  # volume moves (workloads/volume_moves.py) read this layer's volumes

    return volume_moves


def _workloads_for(server: Server, lease_ids: list[int], now: datetime) -> list[Workload]:
    """The workload rows of `lease_ids` on `server`, made for leases that reached it after they were made."""

    def rows() -> list[Workload]:
        return list(
            Workload.objects.filter(server=server, lease_id__in=lease_ids)
            .select_related("server", "lease__workload_spec")
            .order_by("id")
        )

    found = rows()
    if len(found) == len(lease_ids):
        return found
    Workload.objects.bulk_create(
        [Workload(lease_id=lease_id, server=server, created_at=now) for lease_id in lease_ids], ignore_conflicts=True
    )
    return rows()


# --- what agents report ----------------------------------------------------------------------------------------


def _report_time(value: Any, now: datetime) -> datetime:
    return value if isinstance(value, datetime) and value <= now else now


@platform_work(_PLATFORM)
def reported_states_apply(*, server: Server, report: dict[str, Any], now: datetime | None = None) -> int:
    """Apply the workload part of one accepted agent report (already parsed by `parse_workload_report`): the
    latest state of each of this server's workloads (ids of other servers are ignored), the first `running` (from
    which a card-hour lease is charged), lease events for changes, an uncharged failure of a lease whose workload
    failed before it ever ran; the cards the applied version leaves clean; and the report's volumes
    (workloads.volumes.volume_reports_apply). A workload reported as it was last time is not written again.
    Returns the workloads updated."""
    now = now or timezone.now()
    at = _report_time(report.get("sent_at"), now)
    entries = {entry["id"]: entry for entry in report.get("workloads") or []}
    updated = 0
    failed: list[tuple[Lease, str]] = []
    with transaction.atomic():
        rows = (
            Workload.objects.select_for_update(of=("self",))
            .filter(server=server, pk__in=list(entries))
            .select_related("lease")
            .order_by("pk")
        )
        for workload in rows:
            written, changed = _reported_state_save(workload, entries[workload.pk], at)
            updated += written
            if not changed or workload.lease_id is None:  # a data-access session's container: no lease to tell
                continue
            state = workload.state
            scheduler.lease_event_add(
                lease=workload.lease,
                kind=LeaseEvent.Kind.WORKLOAD,
                now=at,
                server=server.pk,
                workload=workload.pk,
                state=state,
                message=workload.message[:300],
                exit_code=workload.exit_code,
            )
            if (
                state == WorkloadState.FAILED
                and _charged_from_usable(workload.lease)
                and not Workload.objects.filter(lease=workload.lease, started_at__isnull=False).exists()
            ):
                failed.append((workload.lease, workload.message or "the workload failed to start"))
        applied = report.get("workloads_version")
        if isinstance(applied, int):
            Gpu.objects.filter(server=server, needs_cleaning=True, clean_after_version__lte=applied).update(
                needs_cleaning=False, clean_after_version=None, clean_requested_at=None
            )
    if report.get("volumes"):
        volumes.volume_reports_apply(server=server, entries=report["volumes"], at=at)
        wiped = {entry["id"] for entry in report["volumes"] if entry["state"] == "wiped"}
        _volume_moves().move_reports_apply(server=server, wiped=wiped, at=at)  # copies left by moves
    for lease, reason in failed:
        scheduler.lease_fail(lease=lease, reason=f"workload failed: {reason}", now=now)
    return updated


def _reported_state_save(workload: Workload, entry: dict[str, Any], at: datetime) -> tuple[bool, bool]:
    """Save what one report entry changes of `workload` (locked by the caller), nothing when it is the same as the
    last report. Returns (saved, its state changed)."""
    state = entry["state"]
    changed = state != workload.state
    fields = {
        "progress": entry.get("progress"),
        "exit_code": entry.get("exit_code"),
        "ports": entry.get("ports") or {},
        "message": entry.get("message", ""),
        "state": state,
    }
    if changed:
        fields["state_changed_at"] = at
    if state == WorkloadState.RUNNING and workload.started_at is None:
        fields["started_at"] = at
    fields = {name: value for name, value in fields.items() if getattr(workload, name) != value}
    if not fields:
        return False, False  # the same as the last report: nothing to write
    for name, value in fields.items():
        setattr(workload, name, value)
    workload.save(update_fields=list(fields))
    return True, changed


def _charged_from_usable(lease: Lease) -> bool:
    """Whether billing charges `lease` from its workload's first running report (card-hour and interruptible)."""
    return lease.plan == Plan.CARD_HOUR or lease.interruptible


def parse_workload_report(payload: dict[str, Any]) -> dict[str, Any]:
    """The workload and volume fields of a report body, checked; InvalidInput on a bad shape (the report is then
    refused)."""
    out: dict[str, Any] = {}
    version = payload.get("workloads_version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
            raise InvalidInput("workloads_version must be a non-negative integer.")
        out["workloads_version"] = version
    if payload.get("volumes") is not None:
        out["volumes"] = volumes.parse_volume_report(payload["volumes"])
    entries = payload.get("workloads")
    if entries is None:
        return out
    if not isinstance(entries, list) or len(entries) > 256:
        raise InvalidInput("workloads must be a list.", fields={"workloads": ["A list of at most 256."]})
    clean = []
    for index, raw in enumerate(entries):
        if not isinstance(raw, dict):
            raise InvalidInput(f"workloads[{index}] must be an object.")
        wid, state = raw.get("id"), raw.get("state")
        if isinstance(wid, bool) or not isinstance(wid, int) or state not in WorkloadState.values:
            raise InvalidInput(f"workloads[{index}] needs an id and a known state.")
        ports: dict[str, int] = {}
        for key, value in (raw.get("ports") or {}).items() if isinstance(raw.get("ports"), dict) else []:
            # ASCII digits only, and short: "²".isdigit() is true but int() refuses it; so does a 5,000-digit key.
            if not (key.isascii() and key.isdigit() and len(key) <= 5 and 0 < int(key) < 65536):
                continue
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
                ports[str(int(key))] = value
        progress = raw.get("progress")
        if not isinstance(progress, int | float) or isinstance(progress, bool) or not math.isfinite(progress):
            progress = None  # 1e999 is valid JSON for float('inf')
        exit_code = raw.get("exit_code")
        clean.append(
            {
                "id": wid,
                "state": state,
                "ports": dict(list(ports.items())[:32]),
                # PostgreSQL text (and jsonb, in the lease event) cannot hold NUL or a lone surrogate; a container's
                # output may have either, and the state is worth more than the report being refused for it.
                "message": clean_text(str(raw.get("message") or ""))[:500],
                "progress": max(0, min(100, int(progress))) if progress is not None else None,
                "exit_code": exit_code if isinstance(exit_code, int) and -(2**31) <= exit_code < 2**31 else None,
            }
        )
    out["workloads"] = clean
    return out
