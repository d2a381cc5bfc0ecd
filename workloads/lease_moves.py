"""A stopped card-hour lease that finds no free cards on its server (issue 16: "started again when cards on that
server are free, or said clearly that they are not; an explicit, consented move to another server copies the volume
there with progress shown").

- `start_alternatives`: the servers where it could start now: free cards of its server's GPU model for its card
  count (its runtime, host access and end as the scheduler places it), and, when it mounts volumes, a live offer
  that prices storage with room for all of them. The lease start's 409 `no_capacity` names them
  (`no_capacity_with_alternatives`), and the lease page offers them.
- `lease_move`: with consent, each volume the lease mounts moves to the chosen server (workloads/volume_moves.py,
  the moves carry the lease); while they run the lease cannot start (`restarts.lease_restarted` refuses). When the
  last of them switches, the lease's server becomes that server and it is started there (`volume_switched`): its
  cards are priced from that server's offer (scheduler/pricing.py). When cards are gone by then, it stays stopped on
  its new server with its volumes, and Start takes cards there once they are free. A lease without volumes just
  starts there. A move of the batch that is cancelled or fails cancels the others not switched yet.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.errors import Conflict, DomainError
from accounts.tenancy import platform_work
from inventory.models import Server
from scheduler import services as scheduler
from scheduler.errors import NoCapacity
from scheduler.models import Lease, LeaseState, Plan
from scheduler.selectors import Filters, free_capacity, period_range
from workloads import volume_moves, volumes
from workloads.models import VolumeState
from workloads.models_moves import LIVE_MOVE_STATES, MoveState, VolumeMove

logger = logging.getLogger(__name__)

_PLATFORM = "a stopped lease's start elsewhere reads other providers' free cards and disk"


def _lease_volumes(lease: Lease) -> list[Any]:
    return [
        mount.volume
        for mount in volumes.lease_mounts(lease)
        if mount.volume.state not in (VolumeState.WIPING, VolumeState.WIPED)
    ]


@platform_work(_PLATFORM)
def start_alternatives(lease: Lease, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Servers other than the lease's where it could start now (see the module docstring), most free cards first:
    `[{"server", "region", "free_gpus", "free_gb"}]` (free_gb: the volume disk left, None without volumes)."""
    now = now or timezone.now()
    if lease.plan != Plan.CARD_HOUR or lease.server_id is None:
        return []
    model_id = lease.gpu_model_id or Server.objects.unscoped(_PLATFORM).values_list("gpu_model_id", flat=True).get(
        pk=lease.server_id
    )
    filters = Filters(
        plan=Plan.CARD_HOUR,
        until=lease.end_at,
        gpu_count=lease.gpu_count,
        gpu_model_id=model_id,
        runtime=lease.runtime,
        host_access=lease.host_access,
    )
    needed = sum(volume.size_gb for volume in _lease_volumes(lease))
    found = []
    for capacity in free_capacity(filters, period_range(now, lease.end_at)):
        if capacity.server_id == lease.server_id or capacity.free < max(lease.gpu_count, capacity.min_cards):
            continue
        server = Server.objects.unscoped(_PLATFORM).get(pk=capacity.server_id)
        free_gb = None
        if needed:
            if volumes.storage_offer(server) is None:
                continue
            free_gb = server.volume_disk_gb - volumes.storage_taken(server)
            if free_gb < needed:
                continue
        found.append({"server": server.pk, "region": server.region, "free_gpus": capacity.free, "free_gb": free_gb})
    return sorted(found, key=lambda item: (-item["free_gpus"], item["server"]))


def no_capacity_with_alternatives(exc: NoCapacity, lease: Lease) -> NoCapacity:
    """The lease start's 409, with the servers it could start on (`servers`) and how (`move`)."""
    servers = start_alternatives(lease)
    message = exc.message
    if servers:
        message += (
            f" Servers {', '.join(str(s['server']) for s in servers[:10])} have free cards of this model"
            + (" and room for its volumes" if _lease_volumes(lease) else "")
            + ': POST /api/v1/leases/{id}/move/ with {"server", "consent": true} moves its volumes there and'
            " starts it there."
        )
    return NoCapacity(message, extra={**exc.extra, "servers": servers})


def lease_moving(lease: Lease) -> bool:
    return VolumeMove.objects.unscoped(_PLATFORM).filter(lease=lease, state__in=LIVE_MOVE_STATES).exists()


@platform_work(_PLATFORM)
def lease_move(*, lease: Lease, target: Server, consent: Any, user: Any = None, now: datetime | None = None):
    """Move the stopped lease's volumes to `target` and start it there (see the module docstring). Returns the
    moves made (empty for a lease without volumes, which is started there at once).

    Refused: no consent (400 `consent_required`); a lease that is not a stopped card-hour one (409
    `invalid_state`); a server that is not among `start_alternatives` now (409 `no_capacity`); and what a volume's
    move refuses (workloads.volume_moves.move_request)."""
    now = now or timezone.now()
    if consent is not True:
        raise volume_moves.consent_error()
    if lease.plan != Plan.CARD_HOUR or lease.state != LeaseState.STOPPED:
        raise Conflict("Only a stopped card-hour lease moves to another server.", code="invalid_state")
    if lease_moving(lease):
        raise Conflict("This lease's volumes are being moved already.", code="volume_moving")
    if target.pk not in {item["server"] for item in start_alternatives(lease, now=now)}:
        raise NoCapacity(
            f"Server {target.pk} has not got {lease.gpu_count} free cards of this model, or room for the lease's "
            "volumes, now; nothing changed."
        )
    moved = _lease_volumes(lease)
    with transaction.atomic():
        locked = Lease.objects.select_for_update().get(pk=lease.pk)
        if locked.state != LeaseState.STOPPED:
            raise Conflict("Only a stopped lease moves to another server.", code="invalid_state")
        moves = [
            volume_moves.move_request(volume=volume, target=target, consent=True, user=user, lease=locked, now=now)
            for volume in moved
        ]
        if not moves:
            Lease.objects.filter(pk=locked.pk).update(server=target)
    if not moves:
        locked.server = target
        scheduler.lease_start(lease=locked, now=now)
    logger.info("lease %s: moving %s volume(s) to server %s to start there", lease.pk, len(moves), target.pk)
    return moves


def volume_switched(move: VolumeMove, now: datetime) -> None:
    """Inside the switch's transaction: when no move of the lease is left to run, the stopped lease's server
    becomes the target and, once that commits, it is started there (it stays stopped there when it cannot be)."""
    if VolumeMove.objects.unscoped(_PLATFORM).filter(lease_id=move.lease_id, state__in=LIVE_MOVE_STATES).exists():
        return
    updated = Lease.objects.filter(pk=move.lease_id, state=LeaseState.STOPPED).update(server_id=move.target_id)
    if updated:
        transaction.on_commit(lambda: _start(move.lease_id, move.target_id))


def _start(lease_id: int, server_id: int) -> None:
    lease = Lease.objects.get(pk=lease_id)
    try:
        scheduler.lease_start(lease=lease)
    except DomainError as exc:
        logger.warning("lease %s moved to server %s but cannot start there now: %s", lease_id, server_id, exc.message)
    else:
        logger.info("lease %s started on server %s after its volumes moved there", lease_id, server_id)


def move_ended(move: VolumeMove, now: datetime) -> None:
    """Inside a cancel or failure of one move of a lease's batch: the others not switched yet are cancelled."""
    others = (
        VolumeMove.objects.unscoped(_PLATFORM)
        .select_for_update()
        .filter(lease_id=move.lease_id, state__in=LIVE_MOVE_STATES)
    )
    for other in others.exclude(pk=move.pk):
        volume_moves.end_move(
            other, MoveState.CANCELLED, "another volume of its lease did not move", now, cascade=False
        )
