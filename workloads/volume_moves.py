"""Moving a volume to another server (issue 16): the customer's consented request and cancel, the transfer through
the platform, the switch, and the old copy's wipe. The model is workloads.models_moves.VolumeMove.

Agents reach only the platform, never each other, so the data goes through it:

1. `move_request`: the customer asks (consent required) for a ready volume that no live lease mounts, to a server
   whose live offer prices storage and has room (the same refusals as a new volume). The target's disk is reserved
   for the copy from now on (`reserved_gb`), and the volume can be mounted by no new lease until the move ends.
2. The source's desired state lists the move in `volume_transfers_out`: its agent streams a tar of the volume in
   chunks of `chunk_bytes` (`chunk_put`, PUT /api/v1/agent/volume-transfers/{move}/chunks/{n}), each with its
   sha256. The platform keeps them in a staging directory (SUANLI_TRANSFER_DIR/<move>/<n>) and counts bytes. A
   chunk sent again with the same content is answered as before; chunks come in order (the agent asks
   `transfer_status` where to resume after a restart). Then it says it has sent all (`transfer_sent`: chunks,
   bytes and the sha256 of the whole stream, which the platform checks against what it staged; a mismatch, e.g. a
   stream that changed across an agent restart, starts the copy over).
3. The target's desired state lists the move in `volume_transfers_in` and the volume among those it keeps: its
   agent makes the volume, reads the chunks as they arrive (`chunk_get`, only the move's target may), unpacks
   them into it and says it has all (`transfer_received`, with the stream's sha256).
4. The switch (then, in the same request): the Volume row moves: its server is the target, its price the
   target's. The staged chunks are removed, and the
   source's desired state lists the volume in `volumes_to_wipe`: its agent destroys the old copy like a deleted
   volume and reports it wiped (`source_wiped_at`, `move_reports_apply`), which frees that disk.
5. Before the switch the customer may cancel (`move_cancel`); a side that cannot go on says so (`transfer_failed`).
   Either way the volume stays where it was, staged chunks are removed and the target's partial copy is wiped.

Billing reads the moves (billing/metering.py): a volume is billed once per second of its life, on the source's
server and price until the start of the platform-clock hour after its switch, on the target's from then on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from accounts import org_log
from accounts.errors import Conflict, InvalidInput, NotFound
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import Server
from scheduler.pricing import rate_between
from workloads import volumes
from workloads.models import Volume, VolumeState
from workloads.models_moves import LIVE_MOVE_STATES, MoveState, VolumeMove

logger = logging.getLogger(__name__)

_PLATFORM = "a move spans its organisation's volume and two providers' servers; an agent reaches only its own moves"

GB = 2**30
CHUNK_MAX = 1 << 20  # the agent reads at most 1 MiB of an answer (agents/client.py MAX_RESPONSE_BYTES)
SHA256 = re.compile(r"[0-9a-f]{64}")
CONSENT_MESSAGE = (
    "Moving copies this volume's data to the other server, switches the volume there, and then wipes the copy on "
    'this server. Tick consent ("consent": true) to go on.'
)


def chunk_bytes() -> int:
    """The chunk size agents are told: at most 1 MiB and never over the API's body limit."""
    wanted = int(getattr(settings, "SUANLI_TRANSFER_CHUNK_BYTES", CHUNK_MAX))
    return max(4096, min(wanted, CHUNK_MAX, int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)))


def transfer_dir() -> Path:
    configured = getattr(settings, "SUANLI_TRANSFER_DIR", None)
    return Path(configured) if configured else Path(settings.VAR_DIR) / "transfers"


def max_stream_bytes(size_gb: int) -> int:
    """The most a volume's tar may be: its size, plus tar's headers (the platform refuses more, and fails the move)."""
    return size_gb * GB + size_gb * GB // 16 + 64 * 2**20


# --- selectors -------------------------------------------------------------------------------------------------


def live_move(volume: Volume) -> VolumeMove | None:
    return (
        VolumeMove.objects.unscoped(_PLATFORM)
        .filter(volume_id=volume.pk, state__in=LIVE_MOVE_STATES)
        .select_related("target")
        .first()
    )


def live_moves_of(volume_ids: list[int]) -> dict[int, VolumeMove]:
    """The live move of each of these volumes that has one (the volumes page lists many)."""
    rows = (
        VolumeMove.objects.unscoped(_PLATFORM)
        .filter(volume_id__in=volume_ids, state__in=LIVE_MOVE_STATES)
        .select_related("target")
    )
    return {move.volume_id: move for move in rows}


def moves_of(org: Organization) -> QuerySet[VolumeMove]:
    return VolumeMove.objects.for_org(org).select_related("source", "target", "volume").order_by("-id")


def reserved_gb(server: Server) -> int:
    """GB of `server`'s volume disk taken by moves beside its own volumes: copies coming in (live moves to it), old
    copies not yet wiped after a move away, and partial copies of cancelled or failed moves not yet wiped."""
    taken = (
        VolumeMove.objects.unscoped(_PLATFORM)
        .filter(
            Q(target=server, state__in=LIVE_MOVE_STATES)
            | Q(source=server, state=MoveState.DONE, source_wiped_at__isnull=True)
            | Q(target=server, state__in=[MoveState.CANCELLED, MoveState.FAILED], target_wiped_at__isnull=True)
        )
        .aggregate(total=Sum("volume__size_gb"))["total"]
    )
    return int(taken or 0)


def is_moving(volume: Volume) -> bool:
    return VolumeMove.objects.unscoped(_PLATFORM).filter(volume_id=volume.pk, state__in=LIVE_MOVE_STATES).exists()


def move_targets(volume: Volume) -> list[volumes.StorageServer]:
    """Servers this volume could move to now: a live offer that prices storage and room for its size."""
    return [s for s in volumes.storage_servers() if s.server.pk != volume.server_id and s.free_gb >= volume.size_gb]


@dataclass(frozen=True)
class Progress:
    state: str
    bytes_done: int
    bytes_total: int
    target_server: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "target_server": self.target_server,
        }


def progress(move: VolumeMove) -> Progress:
    """What the customer is shown: the bytes the target has read of the copy, of its total (an estimate from the
    volume's use until the source has sent everything)."""
    total = max(move.bytes_total, move.bytes_sent, move.bytes_done)
    return Progress(move.state, min(move.bytes_done, total), total, move.target_id)


# --- the customer's request ------------------------------------------------------------------------------------


def consent_error() -> InvalidInput:
    return InvalidInput(CONSENT_MESSAGE, code="consent_required", fields={"consent": [CONSENT_MESSAGE]})


@platform_work(_PLATFORM)
def move_request(
    *,
    volume: Volume,
    target: Server,
    consent: Any,
    user: Any = None,
    lease: Any = None,
    now: datetime | None = None,
) -> VolumeMove:
    """Ask for `volume` to be moved to `target` (see the module docstring), by `user`. `lease`: the stopped lease
    that mounts it and follows it there (workloads/lease_moves.py), whose own mount does not hold it back.

    Refused: no consent (400 `consent_required`); the volume's own server (400 on `server`); a volume not ready
    (409 `volume_not_ready`), mounted by a live lease, a stopped one too (409 `volume_in_use`), already moving
    (409 `volume_moving`) or whose copy from an earlier move is not wiped yet on the target (409 `volume_moving`);
    a target whose live offer prices no storage or without an exchange rate (400 on `server`, as a new volume) or
    without room (409 `no_storage`, decided under a lock of the target's row); and what a registered check refuses
    (billing: 402 `insufficient_funds` when the organisation's money cannot cover the volume at the target's higher
    price, as for a new volume)."""
    now = now or timezone.now()
    if consent is not True:
        raise consent_error()
    if target.pk == volume.server_id:
        message = "The volume is on this server already; choose another one."
        raise InvalidInput(message, fields={"server": [message]})
    offer = volumes.storage_offer(target)
    if offer is None:
        message = "This server lends no volume storage."
        raise InvalidInput(message, fields={"server": [message]})
    rate = rate_between(offer.currency, volume.currency)
    if rate is None:
        message = f"No exchange rate from {offer.currency} to {volume.currency} is configured."
        raise InvalidInput(message, fields={"server": [message]})
    price = max((offer.storage_gb_month_price * rate).quantize(volumes.PRICE_PLACES), volumes.PRICE_PLACES)
    with transaction.atomic():
        locked = Volume.objects.unscoped(_PLATFORM).select_for_update().get(pk=volume.pk)
        if locked.state != VolumeState.READY:
            raise Conflict(
                f"Only a ready volume can move; this one is {locked.get_state_display().lower()}.",
                code="volume_not_ready",
            )
        if volumes.in_data_access(locked):
            raise Conflict("A data-access session mounts this volume; end it first.", code="volume_in_use")
        if volumes.is_mounted(locked, exclude_lease=lease.pk if lease is not None else None):
            raise Conflict(
                "A live lease's workload mounts this volume (a stopped lease keeps its volumes); end that lease first.",
                code="volume_in_use",
            )
        moves = VolumeMove.objects.unscoped(_PLATFORM).filter(volume=locked)
        if moves.filter(state__in=LIVE_MOVE_STATES).exists():
            raise Conflict("This volume is being moved already.", code="volume_moving")
        leftover = moves.filter(
            Q(source=target, state=MoveState.DONE, source_wiped_at__isnull=True)
            | Q(target=target, state__in=[MoveState.CANCELLED, MoveState.FAILED], target_wiped_at__isnull=True)
        )
        if leftover.exists():
            raise Conflict(
                "An earlier copy of this volume on that server is still being wiped; try again in a few minutes.",
                code="volume_moving",
            )
        server = Server.objects.unscoped(_PLATFORM).select_for_update().get(pk=target.pk)
        free = server.volume_disk_gb - volumes.storage_taken(server)
        if locked.size_gb > free:
            raise Conflict(
                f"This server has {max(free, 0)} GB of volume storage left.",
                code="no_storage",
                extra={"available_gb": max(free, 0)},
            )
        move = VolumeMove.objects.create(
            volume=locked,
            organization_id=locked.organization_id,
            source_id=locked.server_id,
            target=server,
            lease=lease,
            requested_by=user if getattr(user, "pk", None) else None,
            source_price=locked.price_per_gb_month,
            target_price=price,
            chunk_bytes=chunk_bytes(),
            bytes_total=int(locked.used_gb * GB),
            requested_at=now,
        )
        for check in _request_checks:
            check(move, now)  # a refusal (billing's 402 at the target's price) rolls the move back
    logger.info("volume %s: move %s from server %s to %s asked for", volume.pk, move.pk, move.source_id, target.pk)
    return move


# Checks a layer above runs on a move just asked for, inside its transaction (billing registers its funds admission at
# the target's price: billing/apps.py); one that raises refuses the move.
_request_checks: list[Callable[[VolumeMove, datetime], None]] = []


def request_check_register(check: Callable[[VolumeMove, datetime], None]) -> None:
    if check not in _request_checks:
        _request_checks.append(check)


@platform_work(_PLATFORM)
def move_cancel(*, volume: Volume, now: datetime | None = None) -> VolumeMove:
    """Cancel the volume's move before its switch: the volume stays where it is, staged chunks are removed and the
    target's partial copy is wiped. 409 `no_move` when it has no move going on (a switched one cannot be undone)."""
    now = now or timezone.now()
    with transaction.atomic():
        move = (
            VolumeMove.objects.unscoped(_PLATFORM)
            .select_for_update()
            .filter(volume_id=volume.pk, state__in=LIVE_MOVE_STATES)
            .first()
        )
        if move is None:
            raise Conflict("This volume is not being moved (a finished move cannot be undone).", code="no_move")
        _end(move, MoveState.CANCELLED, "cancelled by the customer", now)
    return move


def end_move(move: VolumeMove, state: str, message: str, now: datetime, *, cascade: bool = True) -> None:
    """Cancel or fail a live move (locked by the caller); its chunks are removed once the transaction commits. A
    move of a lease's batch takes the others not switched yet with it (workloads/lease_moves.py)."""
    move.state, move.message, move.ended_at = state, message[:300], now
    move.save(update_fields=["state", "message", "ended_at"])
    transaction.on_commit(lambda: _remove_staged(move.pk))
    logger.info("move %s of volume %s: %s (%s)", move.pk, move.volume_id, state, message)
    if cascade and move.lease_id is not None:
        from workloads import lease_moves  # the lease side, which imports this module

        lease_moves.move_ended(move, now)


_end = end_move


def _remove_staged(move_id: int) -> None:
    shutil.rmtree(transfer_dir() / str(int(move_id)), ignore_errors=True)


# --- the agents' side ------------------------------------------------------------------------------------------


def desired_transfers(server: Server) -> dict[str, list[dict[str, Any]]]:
    """The desired state's `volume_transfers_out` (moves whose source is `server`: stream the volume) and
    `volume_transfers_in` (moves to it: make the volume, read and unpack the stream)."""
    rows = (
        VolumeMove.objects.unscoped(_PLATFORM)
        .filter(Q(source=server) | Q(target=server), state__in=LIVE_MOVE_STATES)
        .select_related("volume")
        .order_by("id")
    )
    out, incoming = [], []
    for move in rows:
        item = {"move": move.pk, "volume": move.volume_id, "chunk_bytes": move.chunk_bytes}
        if move.source_id == server.pk:
            out.append(item)
        else:
            incoming.append(item | {"size_gb": move.volume.size_gb, "owner": str(move.organization_id)})
    return {"volume_transfers_out": out, "volume_transfers_in": incoming}


def incoming_volumes(server: Server) -> list[dict[str, Any]]:
    """Volumes `server` must make and keep for a live move to it (the desired state's top-level `volumes`)."""
    rows = VolumeMove.objects.unscoped(_PLATFORM).filter(target=server, state__in=LIVE_MOVE_STATES).order_by("id")
    return [
        {"id": vid, "size_gb": size_gb, "owner": str(owner)}
        for vid, size_gb, owner in rows.values_list("volume_id", "volume__size_gb", "organization_id")
    ]


def copies_to_wipe(server: Server) -> list[int]:
    """Volume ids whose copy on `server` must be destroyed: the old one after a move away, a partial one after a
    cancelled or failed move to it."""
    rows = VolumeMove.objects.unscoped(_PLATFORM).filter(
        Q(source=server, state=MoveState.DONE, source_wiped_at__isnull=True)
        | Q(target=server, state__in=[MoveState.CANCELLED, MoveState.FAILED], target_wiped_at__isnull=True)
    )
    return sorted(set(rows.values_list("volume_id", flat=True)))


@platform_work(_PLATFORM)
def move_reports_apply(*, server: Server, wiped: set[int], at: datetime) -> int:
    """`server`'s agent reported these volume ids wiped: the copies of moves there are destroyed. Returns how many
    moves were written."""
    if not wiped:
        return 0
    with transaction.atomic():
        done = list(
            VolumeMove.objects.unscoped(_PLATFORM)
            .select_for_update(of=("self",))
            .filter(source=server, state=MoveState.DONE, source_wiped_at__isnull=True, volume_id__in=wiped)
            .select_related("volume")
            .order_by("id")
        )
        # A partial copy is wiped only after its move ended: one reported wiped before is a wipe of an older copy.
        ended = list(
            VolumeMove.objects.unscoped(_PLATFORM)
            .select_for_update(of=("self",))
            .filter(
                target=server,
                state__in=[MoveState.CANCELLED, MoveState.FAILED],
                target_wiped_at__isnull=True,
                volume_id__in=wiped,
                ended_at__lte=at,
            )
            .select_related("volume")
            .order_by("id")
        )
        for move in done:
            move.source_wiped_at = at
            move.save(update_fields=["source_wiped_at"])
            _copy_wiped_log(move, server, at)
        for move in ended:
            move.target_wiped_at = at
            move.save(update_fields=["target_wiped_at"])
            _copy_wiped_log(move, server, at)
    return len(done) + len(ended)


def _copy_wiped_log(move: VolumeMove, server: Server, at: datetime) -> None:
    """The organisation's log records a copy of its volume destroyed on `server` (the old one after a move, or a
    partial one after a cancelled or failed move), like a volume's own wipe: once, as the wipe is recorded."""
    volume = move.volume
    org_log.record(
        move.organization_id,
        org_log.VOLUME_COPY_WIPED,
        params={"name": volume.name, "size_gb": volume.size_gb, "server": server.pk, "move": move.pk, "wiped_at": at},
        object_type="volume",
        object_id=volume.pk,
        at=at,
    )


def _agent_move(server: Server, move_id: Any, *, side: str, for_update: bool = True) -> VolumeMove:
    """The move `move_id` when `server` is its `side` ("source" or "target"); NotFound otherwise, as for an id that
    does not exist (one agent learns nothing of other servers' moves)."""
    try:
        pk = int(str(move_id))
    except ValueError:
        raise NotFound("No such transfer.") from None
    if not 0 < pk < 2**63:
        raise NotFound("No such transfer.")
    rows = VolumeMove.objects.unscoped(_PLATFORM).filter(pk=pk, **{side: server})
    if for_update:
        rows = rows.select_for_update()
    move = rows.select_related("volume").first()
    if move is None:
        raise NotFound("No such transfer.")
    return move


def agent_move(server: Server, move_id: Any) -> VolumeMove:
    """The move when `server` is its source or its target; NotFound otherwise."""
    for side in ("source", "target"):
        try:
            return _agent_move(server, move_id, side=side, for_update=False)
        except NotFound:
            continue
    raise NotFound("No such transfer.")


def transfer_status(move: VolumeMove) -> dict[str, Any]:
    """What either agent reads of a move: where to resume and whether all is sent."""
    return {
        "move": move.pk,
        "volume": move.volume_id,
        "state": move.state,
        "live": move.state in LIVE_MOVE_STATES,
        "chunk_bytes": move.chunk_bytes,
        "chunks": move.chunks,
        "bytes_sent": move.bytes_sent,
        "sent": move.sent_at is not None,
        "bytes_total": move.bytes_total if move.sent_at else None,
        "sha256": move.digest or None,
    }


def _not_live(move: VolumeMove) -> Conflict:
    return Conflict(f"This move is {move.state}; nothing more is taken for it.", code="move_over")


def _chunk_path(move: VolumeMove, n: int) -> Path:
    return transfer_dir() / str(move.pk) / f"{n:08d}"


def _check_sha(value: Any) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value.lower()):
        raise InvalidInput("A chunk needs its sha256 (64 hex digits).", fields={"sha256": ["64 hex digits."]})
    return value.lower()


@platform_work(_PLATFORM)
def chunk_put(*, server: Server, move_id: Any, n: Any, data: bytes, sha256: Any, now: datetime | None = None) -> dict:
    """Stage chunk `n` of a move from its source (see the module docstring). Chunk n == chunks appends; an earlier
    one sent again is answered `duplicate` when it is the same (409 when it differs); a later one is 409 (the
    agent asks where to resume). Each chunk but the last is exactly `chunk_bytes`; the whole stream may not pass
    `max_stream_bytes` (the move fails). Returns the transfer status."""
    now = now or timezone.now()
    digest = _check_sha(sha256)
    try:
        index = int(str(n))
    except ValueError:
        raise NotFound("No such chunk.") from None
    if not 0 <= index < 2**31:
        raise NotFound("No such chunk.")
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput("The chunk's sha256 does not match its bytes.", code="checksum_mismatch")
    with transaction.atomic():
        move = _agent_move(server, move_id, side="source")
        if move.state not in LIVE_MOVE_STATES:
            raise _not_live(move)
        if index < move.chunks:
            staged = _chunk_path(move, index).read_bytes()
            if hashlib.sha256(staged).hexdigest() != digest:
                raise Conflict(f"Chunk {index} was staged with other bytes.", code="chunk_differs")
            return transfer_status(move) | {"duplicate": True}
        if index > move.chunks:
            raise Conflict(f"Chunk {move.chunks} comes next.", code="chunk_out_of_order", extra={"next": move.chunks})
        if move.sent_at is not None:
            raise Conflict("Every chunk was sent already.", code="transfer_sent")
        if not data or len(data) > move.chunk_bytes:
            raise InvalidInput(f"A chunk is 1 to {move.chunk_bytes} bytes.", code="chunk_size")
        if move.chunks and move.bytes_sent != move.chunks * move.chunk_bytes:
            raise Conflict("The last chunk was short: the stream has ended.", code="transfer_ended")
        if move.bytes_sent + len(data) > max_stream_bytes(move.volume.size_gb):
            _end(move, MoveState.FAILED, "the copy is bigger than the volume can hold", now)
            return transfer_status(move)
        path = _chunk_path(move, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        with open(partial, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
        move.chunks, move.bytes_sent = index + 1, move.bytes_sent + len(data)
        fields = ["chunks", "bytes_sent"]
        if move.state == MoveState.PENDING:
            move.state = MoveState.COPYING
            fields.append("state")
        move.save(update_fields=fields)
    return transfer_status(move) | {"duplicate": False}


@platform_work(_PLATFORM)
def chunk_get(*, server: Server, move_id: Any, n: Any) -> tuple[bytes, str]:
    """Chunk `n` of a move, for its target only (others: 404), with its sha256; 409 `chunk_not_ready` when it has
    not been staged yet. Counts the bytes the target has read (the customer's progress)."""
    try:
        index = int(str(n))
    except ValueError:
        raise NotFound("No such chunk.") from None
    if not 0 <= index < 2**31:
        raise NotFound("No such chunk.")
    with transaction.atomic():
        move = _agent_move(server, move_id, side="target")
        if move.state not in LIVE_MOVE_STATES:
            raise _not_live(move)
        if index >= move.chunks:
            raise Conflict("That chunk has not been staged yet.", code="chunk_not_ready", extra={"chunks": move.chunks})
        data = _chunk_path(move, index).read_bytes()
        read = min(index * move.chunk_bytes + len(data), move.bytes_sent)
        if read > move.bytes_done:
            move.bytes_done = read
            move.save(update_fields=["bytes_done"])
    return data, hashlib.sha256(data).hexdigest()


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise InvalidInput(f"{name} is a non-negative integer.", fields={name: ["A non-negative integer."]})
    return value


@platform_work(_PLATFORM)
def transfer_sent(*, server: Server, move_id: Any, chunks: Any, total: Any, sha256: Any, now: datetime | None = None):
    """The source has sent the whole stream: `chunks` chunks, `total` bytes, `sha256` of all of it. Checked against
    what is staged (hashed again here); a mismatch (the stream changed across an agent restart, or chunks lost)
    discards the staged chunks and answers 409 `transfer_restart`: the source sends it all again. Idempotent."""
    now = now or timezone.now()
    chunks, total, digest = _count(chunks, "chunks"), _count(total, "bytes"), _check_sha(sha256)
    with transaction.atomic():
        move = _agent_move(server, move_id, side="source")
        if move.state not in LIVE_MOVE_STATES:
            raise _not_live(move)
        if move.sent_at is not None:
            if move.digest == digest and move.bytes_total == total:
                return transfer_status(move)
            raise Conflict("The stream was sent already, with another checksum.", code="transfer_sent")
        staged = hashlib.sha256()
        for index in range(move.chunks):
            staged.update(_chunk_path(move, index).read_bytes())
        matches = chunks == move.chunks and total == move.bytes_sent and staged.hexdigest() == digest
        if matches:
            move.sent_at, move.digest, move.bytes_total = now, digest, total
            if move.state == MoveState.PENDING:
                move.state = MoveState.COPYING  # an empty stream is still one chunk, but be sure
            move.save(update_fields=["sent_at", "digest", "bytes_total", "state"])
        else:
            logger.warning("move %s: the stream sent does not match what is staged; starting the copy over", move.pk)
            move.chunks, move.bytes_sent, move.bytes_done = 0, 0, 0
            move.save(update_fields=["chunks", "bytes_sent", "bytes_done"])
            # Removed now (under the move's lock, so no chunk of the new copy is staged before): the reset is kept.
            _remove_staged(move.pk)
    if not matches:  # raised after the reset is saved
        raise Conflict("The staged copy does not match; send it again from chunk 0.", code="transfer_restart")
    return transfer_status(move)


@platform_work(_PLATFORM)
def transfer_received(*, server: Server, move_id: Any, total: Any, sha256: Any, now: datetime | None = None):
    """The target has read and unpacked the whole stream (`total` bytes whose sha256 is `sha256`): when that is
    what the source sent, the volume switches to the target (`_switch`). Idempotent: a move already switched
    answers its status. 409 `transfer_incomplete` before the source has sent everything or on another checksum."""
    now = now or timezone.now()
    total, digest = _count(total, "bytes"), _check_sha(sha256)
    with transaction.atomic():
        move = _agent_move(server, move_id, side="target")
        if move.state == MoveState.DONE:
            return transfer_status(move)
        if move.state not in LIVE_MOVE_STATES:
            raise _not_live(move)
        if move.sent_at is None or move.digest != digest or move.bytes_total != total:
            raise Conflict(
                "That is not the stream the source sent (or it has not sent all of it yet).",
                code="transfer_incomplete",
            )
        _switch(move, now)
    return transfer_status(move)


@platform_work(_PLATFORM)
def transfer_failed(*, server: Server, move_id: Any, message: Any, now: datetime | None = None) -> dict:
    """Either side cannot go on (the source cannot read the volume, the target cannot make or fill it): the move
    fails, the volume stays where it was. Idempotent on a move already over."""
    now = now or timezone.now()
    text = str(message or "the agent could not go on")[:250]
    with transaction.atomic():
        move = agent_move(server, move_id)
        move = VolumeMove.objects.unscoped(_PLATFORM).select_for_update().get(pk=move.pk)
        if move.state in LIVE_MOVE_STATES:
            side = "source" if move.source_id == server.pk else "target"
            _end(move, MoveState.FAILED, f"{side} server: {text}", now)
    return transfer_status(move)


def _switch(move: VolumeMove, now: datetime) -> None:
    """The switch (inside the caller's transaction, move locked): the Volume row moves to the target at the
    target's price."""
    volume = Volume.objects.unscoped(_PLATFORM).select_for_update().get(pk=move.volume_id)
    if volume.state in (VolumeState.WIPING, VolumeState.WIPED):  # its grace ran out meanwhile: nothing to switch
        end_move(move, MoveState.FAILED, "the volume was wiped while it was being copied", now)
        return
    volume.server_id, volume.price_per_gb_month = move.target_id, move.target_price
    volume.save(update_fields=["server", "price_per_gb_month"])
    move.state, move.switched_at, move.bytes_done = MoveState.DONE, now, move.bytes_total
    move.save(update_fields=["state", "switched_at", "bytes_done"])
    org_log.record(
        volume.organization_id,
        org_log.VOLUME_MOVED,
        params={
            "name": volume.name,
            "size_gb": volume.size_gb,
            "from_server": move.source_id,
            "to_server": move.target_id,
        },
        object_type="volume",
        object_id=volume.pk,
        at=now,
    )
    transaction.on_commit(lambda: _remove_staged(move.pk))
    logger.info("move %s: volume %s is on server %s now", move.pk, volume.pk, move.target_id)
    if move.lease_id is not None:
        from workloads import lease_moves  # the lease side, which imports this module

        lease_moves.volume_switched(move, now)


def desired_apply(body: dict[str, Any], server: Server) -> None:
    """Add the moves of `server` to its desired state `body` (workloads.agent_channel): the volumes it must make
    for a move to it join `volumes`, the copies it must destroy join `volumes_to_wipe`, and the transfers to run
    are listed (the keys only when there is something, so a server without moves is told what it was before)."""
    kept = {item["id"] for item in body["volumes"]}
    body["volumes"] = sorted(
        body["volumes"] + [item for item in incoming_volumes(server) if item["id"] not in kept],
        key=lambda item: item["id"],
    )
    kept |= {item["id"] for item in body["volumes"]}
    body["volumes_to_wipe"] = sorted(set(body["volumes_to_wipe"]) | (set(copies_to_wipe(server)) - kept))
    body.update({key: items for key, items in desired_transfers(server).items() if items})
