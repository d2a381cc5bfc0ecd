"""Volumes: an organisation's storage on one server, apart from any lease (API.md "Volumes"). Services and
selectors: create (priced from the server's offer, within the disk its provider lends), delete (wipe), the mounts
of a new lease's workload, the agent's reports of them, and the grace period billing gives them when an
organisation's money runs out.

States. The stored state is one of creating, ready, grace, wiping, wiped; `in_use` is never stored but derived:
a ready volume is shown `in_use` while a workload spec of a live lease (scheduled, active, stopped) or an open
data-access session (workloads.data_access) mounts it (`with_in_use`, `is_mounted`). So a volume goes back to
`ready` the moment its lease or session ends, however it ends (end, preemption, failure, expiry), with nothing to
write. A volume in grace stays `grace` while mounted (the
state that matters to the customer), and a creating one stays `creating` until its agent reports it made.

- creating -> ready: the agent reports it made ("ready"), `ready_at`.
- ready/creating -> grace (`volumes_hold`, wipe_at set) -> ready (`volumes_release`), or -> wiping when wipe_at
  has passed (`volumes_wipe_due`; a volume mounted by a live lease is left in grace until that lease ends).
- any live state -> wiping: DELETE (409 `volume_in_use` while mounted), `wipe_requested_at`.
- wiping -> wiped: the agent reports its data destroyed ("wiped"), `wiped_at`, used_gb 0.
- never made: a volume not yet made (no `ready_at`; creating, or in grace since) that its agent reports "failed",
  or that is still not made SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS after it was asked for, goes to wiping with the
  reason in `message` (`volume_not_made`): its agent removes whatever it made of it and reports it wiped, which
  frees its disk. It is never billed (billing meters a volume only once it is made).

Every state but wiped takes its size of the server's `volume_disk_gb` (wiping ones too: the data is still there
until the agent says otherwise). Creations on one server are serialised by a lock of the server row, so two of
them cannot overbook it; a mount and a delete of the same volume by a lock of the volume row.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet, Sum
from django.utils import timezone

from accounts import org_log
from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from inventory.access import STOREFRONT
from inventory.models import Offer, Server
from scheduler.pricing import rate_between
from workloads.models import Volume, VolumeMount, VolumeState

logger = logging.getLogger(__name__)

_PLATFORM = "a volume's server is a provider's; its agent reaches only its own server's volumes"

# A lease in one of these states keeps the volumes its workload mounts ("stopped": a lease stopped by its customer
# keeps its volumes; the scheduler may not have that state yet, and the filter simply matches nothing then).
LIVE_LEASE_STATES = ("scheduled", "active", "stopped")
# Stored states the agent must keep the volume's data in (the top-level "volumes" of the desired state).
KEPT_STATES = (VolumeState.CREATING, VolumeState.READY, VolumeState.IN_USE, VolumeState.GRACE)
NAME = re.compile(r"[a-z0-9-]{1,63}")
MAX_MOUNTS = 8
# Paths a volume may not be mounted on, nor under: the kernel's and the container runtime's.
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
# With host access a volume is mounted on the server itself, for its lease user: only under these (the agent's
# agents/runtime/host.py MOUNT_ROOTS holds the same), never over the system's own directories.
HOST_MOUNT_ROOTS = ("/data", "/mnt", "/srv", "/scratch", "/workspace")
HOST_PATHS = (
    "With host access a volume is mounted on the server itself, under /data, /mnt, /srv, /scratch or /workspace."
)
PRICE_PLACES = Decimal("0.0001")
MAX_REPORTED = 1024
MAX_USED_GB = Decimal("100000000")


# --- selectors -------------------------------------------------------------------------------------------------


def _live_mounts() -> QuerySet[VolumeMount]:
    return VolumeMount.objects.unscoped(_PLATFORM).filter(spec__lease__state__in=LIVE_LEASE_STATES)


def _open_session_mounts() -> QuerySet[Any]:
    """The volume rows of open data-access sessions (the sessions' many-to-many table)."""
    return Volume.access_sessions.through.objects.filter(dataaccess__state="open")


def with_in_use(queryset: QuerySet[Volume]) -> QuerySet[Volume]:
    """`queryset` with `mounted` on each row: whether a workload spec of a live lease or an open data-access
    session mounts it."""
    return queryset.annotate(
        mounted=Exists(_live_mounts().filter(volume=OuterRef("pk")))
        | Exists(_open_session_mounts().filter(volume=OuterRef("pk")))
    )


def volumes_of(org: Organization | None) -> QuerySet[Volume]:
    """The organisation's volumes, newest first, with `mounted` (see `shown_state`)."""
    return with_in_use(Volume.objects.for_org(org)).select_related("server").order_by("-id")


def is_mounted(volume: Volume, *, exclude_lease: int | None = None) -> bool:
    """Whether a workload spec of a live lease (other than `exclude_lease`) or an open data-access session mounts
    `volume`. Callers that say which one ask `in_data_access` first."""
    mounts = _live_mounts().filter(volume=volume)
    if exclude_lease is not None:
        mounts = mounts.exclude(spec__lease_id=exclude_lease)
    return mounts.exists() or in_data_access(volume)


def in_data_access(volume: Volume) -> bool:
    """Whether an open data-access session (workloads.data_access) mounts `volume`."""
    return volume.access_sessions.filter(state="open").exists()


def shown_state(volume: Volume) -> str:
    """The state the API shows: a ready volume mounted by a live lease's workload or an open data-access session
    is `in_use`."""
    mounted = getattr(volume, "mounted", None)
    if mounted is None:
        mounted = is_mounted(volume)
    if volume.state == VolumeState.READY and mounted:
        return VolumeState.IN_USE
    return volume.state


def storage_offer(server: Server) -> Offer | None:
    """The server's live offer when it prices volume storage, else None."""
    return (
        Offer.objects.unscoped(STOREFRONT)
        .live()
        .filter(server=server, storage_gb_month_price__isnull=False)
        .order_by("-id")
        .first()
    )


def storage_taken(server: Server) -> int:
    """GB of the server's `volume_disk_gb` its volumes take: every one not wiped."""
    taken = (
        Volume.objects.unscoped(_PLATFORM)
        .filter(server=server)
        .exclude(state=VolumeState.WIPED)
        .aggregate(total=Sum("size_gb"))["total"]
    )
    from workloads import volume_moves  # copies coming in and old ones not yet wiped (it imports this module)

    return int(taken or 0) + volume_moves.reserved_gb(server)


def volume_disk_check(server: Server, volume_disk_gb: int) -> None:
    """Before `server` lends less disk for volumes (inventory.services.server_volume_disk_set, the server row locked;
    registered in WorkloadsConfig.ready): never below what its volumes take. 409 `volume_disk_in_use` otherwise."""
    taken = storage_taken(server)
    if volume_disk_gb < taken:
        raise Conflict(
            f"Its volumes take {taken} GB of the disk lent for volumes: lend at least that much (volumes deleted and "
            "wiped free theirs).",
            code="volume_disk_in_use",
            extra={"taken_gb": taken},
        )


@dataclass(frozen=True)
class StorageServer:
    """A server a customer may make a volume on: its live offer that prices storage, and the GB still free."""

    server: Server
    offer: Offer
    free_gb: int


def storage_servers() -> list[StorageServer]:
    """Servers with a live offer that prices volume storage and disk lent for volumes (the create form's choices),
    each with its newest such offer and the GB of `volume_disk_gb` not yet taken; full ones are left out."""
    offers = (
        Offer.objects.unscoped(STOREFRONT)
        .live()
        .filter(storage_gb_month_price__isnull=False, server__volume_disk_gb__gt=0)
        .select_related("server", "server__gpu_model")
        .order_by("server_id", "-id")
    )
    found: dict[int, StorageServer] = {}
    for offer in offers:
        if offer.server_id in found:
            continue
        free = offer.server.volume_disk_gb - storage_taken(offer.server)
        if free > 0:
            found[offer.server_id] = StorageServer(server=offer.server, offer=offer, free_gb=free)
    return list(found.values())


def mountable_volumes(org: Organization, server: Server) -> QuerySet[Volume]:
    """The organisation's volumes on `server` a new lease's workload may mount: ready and mounted by no live lease
    nor open data-access session (the rent form's choices; `mounts_lock` decides again when the lease is made)."""
    return volumes_of(org).filter(server=server, state=VolumeState.READY, mounted=False)


def lease_mounts(lease: Any) -> list[VolumeMount]:
    """The volumes the workload of `lease` mounts (with `volume`), by path: the lease page lists them."""
    return list(
        VolumeMount.objects.unscoped(_PLATFORM)
        .filter(spec__lease=lease, volume__organization_id=lease.organization_id)
        .select_related("volume")
        .order_by("path", "id")
    )


# --- create and delete -----------------------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        message = "1-63 characters: lower-case letters, digits and '-'."
        raise InvalidInput(message, fields={"name": [message]})
    return name


@platform_work(_PLATFORM)
def volume_create(
    *,
    org: Organization,
    server: Server,
    name: str,
    size_gb: int,
    now: datetime | None = None,
    by: User | None = None,
) -> Volume:
    """Make a volume of `size_gb` on `server` for `org` (state creating; the agent makes it on its next read).

    Refused: a server whose live offer prices no storage (400 on `server`), a name the organisation already has
    among its live volumes (400 on `name`), more than what is left of the server's `volume_disk_gb` (409
    `no_storage`; decided under a lock of the server row), no exchange rate from the offer's currency, and what a
    registered check refuses (billing: 402 when the organisation's money cannot cover it). The price
    per GB-month is the offer's, converted into the organisation's currency like a lease's (scheduler/pricing.py),
    and fixed for the volume's life. Logged in the organisation's log (`by`: the member who asked).
    """
    now = now or timezone.now()
    name = _check_name(name)
    if isinstance(size_gb, bool) or not isinstance(size_gb, int) or not 1 <= size_gb <= 100_000:
        raise InvalidInput("size_gb is 1-100000.", fields={"size_gb": ["A whole number of GB, 1-100000."]})
    offer = storage_offer(server)
    if offer is None:
        message = "This server lends no volume storage."
        raise InvalidInput(message, fields={"server": [message]})
    rate = rate_between(offer.currency, org.currency)
    if rate is None:
        message = f"No exchange rate from {offer.currency} to {org.currency} is configured."
        raise InvalidInput(message, fields={"server": [message]})
    price = max((offer.storage_gb_month_price * rate).quantize(PRICE_PLACES), PRICE_PLACES)
    if Volume.objects.for_org(org).exclude(state=VolumeState.WIPED).filter(name=name).exists():
        raise _duplicate_name()
    try:
        with transaction.atomic():
            locked = Server.objects.unscoped(_PLATFORM).select_for_update().get(pk=server.pk)
            free = locked.volume_disk_gb - storage_taken(locked)
            if size_gb > free:
                raise Conflict(
                    f"This server has {max(free, 0)} GB of volume storage left.",
                    code="no_storage",
                    extra={"available_gb": max(free, 0)},
                )
            volume = Volume.objects.create(
                organization=org,
                server=locked,
                name=name,
                size_gb=size_gb,
                price_per_gb_month=price,
                currency=org.currency,
                created_at=now,
            )
            for check in _create_checks:
                check(volume, now)  # a refusal (billing's 402) rolls the volume back
            _log(volume, org_log.VOLUME_CREATED, actor=by, at=now)
            return volume
    except IntegrityError:
        raise _duplicate_name() from None


# Checks a layer above runs on a volume just made, inside its transaction (billing registers its balance check:
# billing/apps.py); one that raises refuses the volume.
_create_checks: list[Callable[[Volume, datetime], None]] = []


def create_check_register(check: Callable[[Volume, datetime], None]) -> None:
    if check not in _create_checks:
        _create_checks.append(check)


def _moving(volume: Volume) -> bool:
    from workloads import volume_moves  # it imports this module

    return volume_moves.is_moving(volume)


def _duplicate_name() -> InvalidInput:
    message = "You already have a volume of this name."
    return InvalidInput(message, code="duplicate_name", fields={"name": [message]})


@platform_work(_PLATFORM)
def volume_delete(*, volume: Volume, now: datetime | None = None, by: User | None = None) -> Volume:
    """Wipe `volume`: state wiping, and its agent destroys its data (then it is `wiped` and no longer billed).
    409 `volume_in_use` while a live lease's workload mounts it. Idempotent on a volume already wiping or wiped.
    Logged in the organisation's log (`by`: the member who asked), once."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Volume.objects.unscoped(_PLATFORM).select_for_update().get(pk=volume.pk)
        if locked.state in (VolumeState.WIPING, VolumeState.WIPED):
            return locked
        if in_data_access(locked):
            raise Conflict("A data-access session mounts this volume; end it first.", code="volume_in_use")
        if is_mounted(locked):
            raise Conflict(
                "A live lease's workload mounts this volume; end or stop that lease first.", code="volume_in_use"
            )
        if _moving(locked):
            raise Conflict("This volume is being moved; cancel the move first.", code="volume_moving")
        locked.state, locked.wipe_at, locked.wipe_requested_at = VolumeState.WIPING, None, now
        locked.save(update_fields=["state", "wipe_at", "wipe_requested_at"])
        _log(locked, org_log.VOLUME_DELETED, actor=by, at=now)
    return locked


def _log(volume: Volume, kind: str, *, actor: User | None = None, at: datetime | None = None, **params: Any) -> None:
    """One line of the volume's organisation's log about it (accounts.org_log)."""
    org_log.record(
        volume.organization_id,
        kind,
        params={"name": volume.name, "size_gb": volume.size_gb, "server": volume.server_id, **params},
        actor=actor,
        object_type="volume",
        object_id=volume.pk,
        at=at,
    )


# --- mounts of a new lease's workload --------------------------------------------------------------------------


def mount_error(message: str) -> InvalidInput:
    return InvalidInput(message, fields={"workload": {"volumes": [message]}})


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 255:
        raise mount_error("A mount path is absolute (it starts with /), at most 255 characters.")
    if not path.isascii() or not path.isprintable() or any(c in path for c in "\\:,"):
        raise mount_error("A mount path is printable ASCII without '\\', ':' or ','.")
    parts = path.rstrip("/").split("/")[1:]
    if not parts:
        raise mount_error("A volume cannot be mounted on /.")
    if any(part in ("", ".", "..") for part in parts):
        raise mount_error(f"{path[:60]}: no empty, '.' or '..' parts.")
    clean = "/" + "/".join(parts)
    if any(clean == root or clean.startswith(root + "/") for root in FORBIDDEN_ROOTS):
        raise mount_error(f"{clean[:60]}: not under /proc, /sys or /dev.")
    return clean


@dataclass(frozen=True)
class MountRequest:
    volume_id: int
    path: str


def mounts_parse(entries: Any) -> list[MountRequest]:
    """A workload's `volumes` (`[{"volume": id, "path": "/data"}]`), checked for shape: at most 8, absolute
    paths that are not /, nor under /proc, /sys or /dev, no '..'; each volume and each path once."""
    if entries is None:
        return []
    if not isinstance(entries, list) or len(entries) > MAX_MOUNTS:
        raise mount_error(f"At most {MAX_MOUNTS} volumes.")
    mounts: list[MountRequest] = []
    for entry in entries:
        volume = entry.get("volume") if isinstance(entry, dict) else None
        if isinstance(volume, bool) or not isinstance(volume, int) or not 0 < volume < 2**63:
            raise mount_error('Each volume is {"volume": <id>, "path": "/data"}.')
        mounts.append(MountRequest(volume, _check_path(entry.get("path"))))
    if len({m.path for m in mounts}) != len(mounts):
        raise mount_error("Each path once.")
    if len({m.volume_id for m in mounts}) != len(mounts):
        raise mount_error("Each volume once.")
    return mounts


def host_paths_check(mounts: list[MountRequest]) -> None:
    """A host-access workload's mounts (already checked by `mounts_parse`) must each lie under HOST_MOUNT_ROOTS."""
    for mount in mounts:
        if not any(mount.path == root or mount.path.startswith(root + "/") for root in HOST_MOUNT_ROOTS):
            raise mount_error(HOST_PATHS)


def mounts_lock(*, org: Organization, mounts: list[MountRequest]) -> list[tuple[Volume, str]]:
    """Inside the caller's transaction: the volumes of `mounts`, locked, each checked to be the organisation's
    (another's answers like a missing id), live, out of grace, ready (a creating one is 409 `volume_not_ready`: a
    workload would otherwise start without it if its server failed to make it), mounted by no other live lease nor
    data-access session, not moving, and all on one server. The lock holds a concurrent delete or mount of the same
    volume until the caller's lease is made."""
    if not mounts:
        return []
    ids = sorted(m.volume_id for m in mounts)
    found = {
        v.pk: v
        for v in Volume.objects.for_org(org).filter(pk__in=ids).select_related("server").select_for_update(of=("self",))
    }
    out: list[tuple[Volume, str]] = []
    for mount in mounts:
        volume = found.get(mount.volume_id)
        if volume is None or volume.state in (VolumeState.WIPING, VolumeState.WIPED):
            raise mount_error(f"Unknown volume {mount.volume_id}.")
        if volume.state == VolumeState.GRACE:
            raise Conflict(
                f"Volume {volume.name} is kept for a grace period (your balance ran out); top up first.",
                code="volume_in_grace",
            )
        if volume.state != VolumeState.READY:  # creating: its server has not made it yet
            raise Conflict(
                f"Volume {volume.name} is not ready yet: its server has not made it; try again once it is ready.",
                code="volume_not_ready",
            )
        if in_data_access(volume):
            raise Conflict(f"Volume {volume.name} is open in a data-access session.", code="volume_in_use")
        if is_mounted(volume):
            raise Conflict(f"Volume {volume.name} is mounted by another live lease.", code="volume_in_use")
        if _moving(volume):
            raise Conflict(f"Volume {volume.name} is being moved to another server.", code="volume_moving")
        out.append((volume, mount.path))
    if len({volume.server_id for volume, _path in out}) > 1:
        raise mount_error("All volumes of a workload must be on one server.")
    return out


def mounts_create(*, spec: Any, mounts: Iterable[tuple[Volume, str]]) -> None:
    VolumeMount.objects.bulk_create([VolumeMount(spec=spec, volume=volume, path=path) for volume, path in mounts])


# --- what agents are told and report ---------------------------------------------------------------------------


def desired_volumes(server: Server) -> tuple[list[dict[str, Any]], list[int]]:
    """The server's volumes its agent must keep (`[{"id", "size_gb", "owner"}]`, the owner the organisation's id, so
    that the agent itself refuses to mount a volume into another organisation's workload) and those whose data it
    must destroy."""
    rows = Volume.objects.unscoped(_PLATFORM).filter(server=server).exclude(state=VolumeState.WIPED).order_by("id")
    kept, wipe = [], []
    for vid, size_gb, state, owner in rows.values_list("id", "size_gb", "state", "organization_id"):
        if state == VolumeState.WIPING:
            wipe.append(vid)
        else:
            kept.append({"id": vid, "size_gb": size_gb, "owner": str(owner)})
    return kept, wipe


def spec_volumes(spec: Any, server: Server) -> list[dict[str, Any]]:
    """A workload item's `volumes` on `server`: the spec's mounts of volumes still kept (a wiping one is never
    mounted) that are on that server (a lease that also holds cards elsewhere, after a resize or a failover, runs
    its workload there without them: a volume lives on one server)."""
    mounts = VolumeMount.objects.unscoped(_PLATFORM).filter(
        spec=spec, volume__server=server, volume__state__in=KEPT_STATES
    )
    return [
        {"id": vid, "path": path, "size_gb": size_gb}
        for vid, path, size_gb in mounts.order_by("path").values_list("volume_id", "path", "volume__size_gb")
    ]


def parse_volume_report(raw: Any) -> list[dict[str, Any]]:
    """A report's `volumes`, checked: a list of at most 1024 objects with an integer id, a state of ready, wiped
    or failed and a finite used_gb (clamped to 0..1e8); InvalidInput (the report is refused) on another shape."""
    if not isinstance(raw, list) or len(raw) > MAX_REPORTED:
        raise InvalidInput("volumes must be a list.", fields={"volumes": [f"A list of at most {MAX_REPORTED}."]})
    clean = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InvalidInput(f"volumes[{index}] must be an object.")
        vid, state = entry.get("id"), entry.get("state")
        if isinstance(vid, bool) or not isinstance(vid, int) or not 0 < vid < 2**63:
            raise InvalidInput(f"volumes[{index}] needs an id.")
        if state not in ("ready", "wiped", "failed"):
            raise InvalidInput(f"volumes[{index}]: state is ready, wiped or failed.")
        used = entry.get("used_gb")
        if isinstance(used, bool) or not isinstance(used, int | float) or not math.isfinite(used):
            used = None
        else:
            used = min(max(Decimal(str(used)), Decimal(0)), MAX_USED_GB).quantize(Decimal("0.001"))
        message = entry.get("message")
        clean.append({"id": vid, "state": state, "used_gb": used, "message": str(message)[:300] if message else ""})
    return clean


@platform_work(_PLATFORM)
def volume_reports_apply(*, server: Server, entries: list[dict[str, Any]], at: datetime) -> int:
    """Apply the `volumes` of one report (parsed by `parse_volume_report`) to `server`'s volumes; ids of other
    servers' volumes are ignored. creating -> ready on "ready"; wiping -> wiped on "wiped" (used_gb 0); used_gb
    as reported otherwise. "failed" of a volume never made sends it to wiping with the agent's message (see the
    module docstring); of another (a mount after a restart, a wipe) it is logged and changes nothing (the agent
    retries). Returns the rows written."""
    by_id = {entry["id"]: entry for entry in entries}
    if not by_id:
        return 0
    written = 0
    with transaction.atomic():
        rows = (
            Volume.objects.unscoped(_PLATFORM)
            .select_for_update()
            .filter(server=server, pk__in=list(by_id))
            .exclude(state=VolumeState.WIPED)
            .order_by("pk")
        )
        for volume in rows:
            entry = by_id[volume.pk]
            fields: dict[str, Any] = {}
            if entry["state"] == "wiped":
                if volume.state == VolumeState.WIPING:
                    fields = {"state": VolumeState.WIPED, "wiped_at": at, "used_gb": Decimal(0)}
                    _log(volume, org_log.VOLUME_WIPED, at=at, wiped_at=at)
            elif entry["state"] == "failed":
                if _never_made(volume):
                    _not_made(volume, entry["message"] or "the server could not make it", at)
                    written += 1
                    continue
                logger.warning("volume %s on server %s failed: %s", volume.pk, server.pk, entry["message"])
            else:
                if volume.state == VolumeState.CREATING:
                    fields["state"] = VolumeState.READY
                if volume.ready_at is None and volume.state != VolumeState.WIPING:
                    fields["ready_at"] = at
                if entry["used_gb"] is not None and entry["used_gb"] != volume.used_gb:
                    fields["used_gb"] = entry["used_gb"]
            if fields:
                for name, value in fields.items():
                    setattr(volume, name, value)
                volume.save(update_fields=list(fields))
                written += 1
    return written


def _never_made(volume: Volume) -> bool:
    return volume.ready_at is None and volume.state in (VolumeState.CREATING, VolumeState.GRACE)


def _not_made(volume: Volume, message: str, at: datetime) -> None:
    """`volume` (locked, never made) -> wiping with `message`, logged."""
    volume.state, volume.wipe_at, volume.wipe_requested_at, volume.message = VolumeState.WIPING, None, at, message
    volume.save(update_fields=["state", "wipe_at", "wipe_requested_at", "message"])
    _log(volume, org_log.VOLUME_FAILED, at=at, message=message)


def create_timeout() -> timedelta:
    return timedelta(seconds=settings.SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS)


@platform_work(_PLATFORM)
def volumes_not_made(*, now: datetime | None = None) -> int:
    """Volumes still not made SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS after they were asked for -> wiping, like one
    its agent reported failed (run by the periodic workload check). Idempotent; rows locked, skipped when another
    run holds them. Returns how many."""
    now = now or timezone.now()
    minutes = max(1, settings.SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS // 60)
    with transaction.atomic():
        late = list(
            Volume.objects.unscoped(_PLATFORM)
            .filter(
                state__in=[VolumeState.CREATING, VolumeState.GRACE],
                ready_at__isnull=True,
                created_at__lt=now - create_timeout(),
            )
            .select_for_update(skip_locked=True)
            .order_by("id")
        )
        for volume in late:
            _not_made(volume, f"the server did not make it within {minutes} minutes", now)
    return len(late)


# --- grace (billing/funds: an organisation's money ran out, or came back) --------------------------------------


@platform_work(_PLATFORM)
def volumes_hold(*, org: Organization, wipe_at: datetime, now: datetime | None = None) -> int:
    """Keep `org`'s volumes for a grace period: ready (also those in use) and creating ones -> grace, wiped at
    `wipe_at` unless `volumes_release` comes first. A volume in grace stays in its agent's desired state but
    cannot be newly mounted. Returns how many were held."""
    return (
        Volume.objects.for_org(org)
        .filter(state__in=[VolumeState.CREATING, VolumeState.READY, VolumeState.IN_USE])
        .update(state=VolumeState.GRACE, wipe_at=wipe_at)
    )


@platform_work(_PLATFORM)
def volumes_release(*, org: Organization) -> int:
    """`org` paid: its volumes in grace are ready again (wipe_at cleared); one its agent has not made yet is
    creating again. Returns how many."""
    held = Volume.objects.for_org(org).filter(state=VolumeState.GRACE)
    made = held.filter(ready_at__isnull=False).update(state=VolumeState.READY, wipe_at=None)
    return made + held.filter(ready_at__isnull=True).update(state=VolumeState.CREATING, wipe_at=None)


@platform_work(_PLATFORM)
def volumes_wipe_due(*, now: datetime | None = None) -> list[Volume]:
    """Volumes in grace whose `wipe_at` has passed -> wiping (their agents destroy the data), and returned so the
    caller can tell their organisations. One still mounted by a live lease's workload stays in grace until that
    lease ends: its data is not pulled from under a running contract. Safe to run concurrently (rows locked,
    skipped when another run holds them)."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            with_in_use(Volume.objects.unscoped(_PLATFORM))
            .filter(state=VolumeState.GRACE, wipe_at__lte=now, mounted=False)
            .exclude(access_sessions__state="open")  # ended first by `wipe_volumes`
            .select_related("organization", "server")
            .select_for_update(of=("self",), skip_locked=True)
            .order_by("id")
        )
        for volume in due:
            volume.state, volume.wipe_at, volume.wipe_requested_at = VolumeState.WIPING, None, now
            _log(volume, org_log.GRACE_ENDED, at=now)
        Volume.objects.unscoped(_PLATFORM).bulk_update(due, ["state", "wipe_at", "wipe_requested_at"])
    return due


# Called with the volumes `wipe_volumes` has just sent to wiping (billing registers the mail to their
# organisations, in its AppConfig.ready), so the periodic job tells the customer without workloads knowing billing.
_wipe_listeners: list[Callable[[list[Volume]], None]] = []


def wipe_listener_register(listener: Callable[[list[Volume]], None]) -> None:
    if listener not in _wipe_listeners:
        _wipe_listeners.append(listener)


def wipe_volumes(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job (beat `wipe-volumes`, `manage.py wipe_volumes`): `volumes_wipe_due`, then each registered
    listener with the volumes sent to wiping. Idempotent. The data-access sessions on volumes whose grace is over
    are ended first (workloads.data_access): a volume is never wiped under an open session."""
    from workloads.data_access import end_for_due_wipes  # data access sits above volumes

    now = now or timezone.now()
    end_for_due_wipes(now=now)
    due = volumes_wipe_due(now=now)
    if due:
        for listener in _wipe_listeners:
            listener(due)
    return {"wiping": len(due)}
