"""Data access without cards (issue 16): an organisation reaches its volumes while it rents no card, above all in
the grace period after its money ran out. A session is a small container (SUANLI_DATA_ACCESS_IMAGE: SSH only, 1 CPU,
1 GB) on the volumes' server, with the volumes at /data/<name> and the opener's SSH keys; it takes no card, so it
runs beside leases and is never refused for want of free cards.

It is run by the agent's workload pipeline: its container is a `Workload` row with `data_access` set and no lease,
served in the desired state's `data_access` list (an added field: an agent of before ignores it, and the session
then simply never runs, nor is billed). The agent reports it among its `workloads`, as any other.

- Open (`data_access_open`): volumes of the organisation on one server, ready or in grace (a creating, wiping or
  wiped one is unknown), mounted by no live lease and by no other open session (409 `volume_in_use`), not being
  moved to another server (409 `volume_moving`: the lock of its row orders the two); at least one
  of the caller's SSH keys (copied in, like a lease's). Priced per hour from the server's live offer
  (`Offer.data_access_hour_price`, else SUANLI_DATA_ACCESS_HOUR_PRICE in the offer's currency), converted into the
  organisation's currency and fixed. The registered checks run inside its transaction (billing's funds admission:
  skipped when every volume is in grace, which is what the mode is for).
- End: DELETE (`data_access_end`), its `ends_at` (opened + SUANLI_DATA_ACCESS_MAX_HOURS; the agent is told it as
  `stop_by` and removes the container itself, `data_access_expire` records it), or the wipe of a volume it mounts
  (`end_for_wipe`: ended before the volume goes to wiping; a volume is never wiped under an open session).
- Billed per second from its container's first `running` report until it ended or reached `ends_at`, whichever is
  first (billing/metering.py `access_slots`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import org_log
from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from inventory.access import STOREFRONT
from inventory.models import Offer, Server
from scheduler.pricing import rate_between
from workloads import volume_moves
from workloads.access import ssh_keys_of
from workloads.models import DataAccess, Volume, VolumeState, Workload, WorkloadState
from workloads.volumes import PRICE_PLACES, is_mounted

_PLATFORM = "a data-access session runs on a provider's server; its agent reaches only its own server's sessions"

MAX_VOLUMES = 8
# What its container gets: a fixed small share, whatever the server.
LIMITS = {"cpus": 1, "memory_mb": 1024, "disk_gb": 2}
SSH_PORT = 22
# The stored states of a volume a session may open (a ready one mounted by a live lease is refused apart).
OPENABLE = (VolumeState.READY, VolumeState.GRACE)


def max_duration() -> timedelta:
    return timedelta(hours=settings.SUANLI_DATA_ACCESS_MAX_HOURS)


# --- selectors -------------------------------------------------------------------------------------------------


def sessions_of(org: Organization | None) -> QuerySet[DataAccess]:
    """The organisation's sessions, newest first, with their container and volumes."""
    return (
        DataAccess.objects.for_org(org).select_related("server", "workload").prefetch_related("volumes").order_by("-id")
    )


def shown_state(session: DataAccess) -> str:
    """`ended`, or while open the state of its container (pending until the agent reports it, then pulling,
    starting, running, failed ...)."""
    if session.state == DataAccess.State.ENDED:
        return "ended"
    workload = getattr(session, "workload", None)
    return workload.state if workload is not None else WorkloadState.PENDING


def connect(session: DataAccess) -> dict[str, Any] | None:
    """How to reach a running session: `{"kind": "ssh", "host", "port", "user", "command"}`, else None."""
    workload = getattr(session, "workload", None)
    if session.state != DataAccess.State.OPEN or workload is None or workload.state != WorkloadState.RUNNING:
        return None
    port = (workload.ports or {}).get(str(SSH_PORT))
    if not port:
        return None
    host = session.server.public_host or session.server.hostname or session.server.name
    shown = f"[{host}]" if ":" in host else host
    return {"kind": "ssh", "host": host, "port": port, "user": "root", "command": f"ssh -p {port} root@{shown}"}


def open_sessions_mounting(volume: Volume) -> QuerySet[DataAccess]:
    return DataAccess.objects.unscoped(_PLATFORM).filter(state=DataAccess.State.OPEN, volumes=volume)


def price_of(server: Server, org: Organization) -> tuple[Decimal, str]:
    """The price per hour of a session on `server` for `org`, in its currency: the live offer's
    data_access_hour_price, else the platform's default in the offer's currency. InvalidInput when the server has
    no live offer lending volume storage or no exchange rate is configured."""
    offer = (
        Offer.objects.unscoped(STOREFRONT)
        .live()
        .filter(server=server, storage_gb_month_price__isnull=False)
        .order_by("-id")
        .first()
    )
    if offer is None:
        message = "This server offers no data access (it lends no volume storage now)."
        raise InvalidInput(message, fields={"server": [message]})
    price = offer.data_access_hour_price or settings.SUANLI_DATA_ACCESS_HOUR_PRICE
    rate = rate_between(offer.currency, org.currency)
    if rate is None:
        message = f"No exchange rate from {offer.currency} to {org.currency} is configured."
        raise InvalidInput(message, fields={"server": [message]})
    return max((price * rate).quantize(PRICE_PLACES), PRICE_PLACES), org.currency


# --- open and end ----------------------------------------------------------------------------------------------


def _ids(raw: Any, field: str, noun: str, *, at_most: int) -> list[int]:
    if (
        not isinstance(raw, list)
        or not raw
        or len(raw) > at_most
        or any(isinstance(i, bool) or not isinstance(i, int) or not 0 < i < 2**63 for i in raw)
        or len(set(raw)) != len(raw)
    ):
        message = f"A list of 1 to {at_most} {noun} ids, each once."
        raise InvalidInput(message, fields={field: [message]})
    return sorted(raw)


# Checks a layer above runs on a session just opened, inside its transaction (billing registers its funds
# admission: billing/apps.py); one that raises refuses the session.
_open_checks: list[Callable[[DataAccess, list[Volume], datetime], None]] = []


def open_check_register(check: Callable[[DataAccess, list[Volume], datetime], None]) -> None:
    if check not in _open_checks:
        _open_checks.append(check)


@platform_work(_PLATFORM)
def data_access_open(
    *, org: Organization, user: User, server: Server, volumes: Any, ssh_keys: Any, now: datetime | None = None
) -> DataAccess:
    """Open a session on `server` for `volumes` (ids of the organisation's volumes there) with `ssh_keys` (ids of
    the user's keys). 400 with fields on bad input, 409 `volume_in_use` when a live lease or another open session
    mounts one, 409 `volume_moving` when one is being moved, 402 from billing's check when the organisation cannot
    pay for it (outside grace)."""
    now = now or timezone.now()
    volume_ids = _ids(volumes, "volumes", "volume", at_most=MAX_VOLUMES)
    key_ids = _ids(ssh_keys, "ssh_keys", "SSH key", at_most=50)
    keys = list(ssh_keys_of(user).filter(pk__in=key_ids))
    if len(keys) != len(key_ids):
        raise InvalidInput("Unknown SSH key.", fields={"ssh_keys": ["Not one of your keys."]})
    price, currency = price_of(server, org)
    with transaction.atomic():
        found = {
            v.pk: v for v in Volume.objects.for_org(org).filter(pk__in=volume_ids).select_for_update().order_by("pk")
        }
        locked: list[Volume] = []
        for volume_id in volume_ids:
            volume = found.get(volume_id)
            if volume is None or volume.state in (VolumeState.WIPING, VolumeState.WIPED):
                message = f"Unknown volume {volume_id}."
                raise InvalidInput(message, fields={"volumes": [message]})
            if volume.server_id != server.pk:
                message = f"Volume {volume.name} is on another server."
                raise InvalidInput(message, fields={"volumes": [message]})
            if volume.state == VolumeState.GRACE and volume.wipe_at is not None and volume.wipe_at <= now:
                raise Conflict(f"Volume {volume.name}'s grace period is over: it is being wiped.", code="volume_wiping")
            if volume.state not in OPENABLE:
                message = f"Volume {volume.name} is not made yet."
                raise InvalidInput(message, fields={"volumes": [message]})
            if open_sessions_mounting(volume).exists():
                raise Conflict(f"Volume {volume.name} is open in another data-access session.", code="volume_in_use")
            if volume_moves.is_moving(volume):
                raise Conflict(f"Volume {volume.name} is being moved to another server.", code="volume_moving")
            if is_mounted(volume):
                raise Conflict(
                    f"Volume {volume.name} is mounted by a live lease; reach it from there, or end or stop that "
                    "lease first.",
                    code="volume_in_use",
                )
            locked.append(volume)
        session = DataAccess.objects.create(
            organization=org,
            server=server,
            ssh_keys=[{"name": k.name, "fingerprint": k.fingerprint, "public_key": k.public_key} for k in keys],
            price_per_hour=price,
            currency=currency,
            created_at=now,
            ends_at=now + max_duration(),
        )
        session.volumes.set(locked)
        Workload.objects.create(data_access=session, server=server, created_at=now)
        for check in _open_checks:
            check(session, locked, now)  # a refusal (billing's 402) rolls the session back
        org_log.record(
            org,
            org_log.DATA_ACCESS_OPENED,
            params={"session": session.pk, "server": server.pk, "volumes": ", ".join(v.name for v in locked)},
            actor=user,
            object_type="data_access",
            object_id=session.pk,
            at=now,
        )
    return session


@platform_work(_PLATFORM)
def data_access_end(
    *, session: DataAccess, reason: str = DataAccess.EndReason.DELETED, now: datetime | None = None
) -> DataAccess:
    """End `session` (its container leaves the desired state; the agent removes it). Idempotent. Billing stops at
    the end, or at `ends_at` if that came first."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = DataAccess.objects.unscoped(_PLATFORM).select_for_update().get(pk=session.pk)
        if locked.state == DataAccess.State.OPEN:
            locked.state, locked.ended_at, locked.end_reason = DataAccess.State.ENDED, min(now, locked.ends_at), reason
            locked.save(update_fields=["state", "ended_at", "end_reason"])
            # A container its agent never reported (an agent of before data access, or one that never polled) has
            # nothing on the host to clean: it is over, not stuck.
            Workload.objects.filter(
                data_access=locked, state=WorkloadState.PENDING, state_changed_at__isnull=True
            ).update(state=WorkloadState.CLEANED, state_changed_at=now)
            org_log.record(
                locked.organization_id,
                org_log.DATA_ACCESS_ENDED,
                params={"session": locked.pk, "server": locked.server_id, "reason": locked.end_reason},
                object_type="data_access",
                object_id=locked.pk,
                at=now,
            )
    return locked


@platform_work(_PLATFORM)
def data_access_expire(*, now: datetime | None = None) -> int:
    """Record the end of every open session whose `ends_at` has passed (its agent stopped it there already, by
    its `stop_by`). Idempotent; the periodic workload check runs it. Returns how many ended."""
    now = now or timezone.now()
    due = DataAccess.objects.unscoped(_PLATFORM).filter(state=DataAccess.State.OPEN, ends_at__lte=now)
    ended = 0
    for session in due.order_by("id"):
        before = session.state
        ended += data_access_end(session=session, reason=DataAccess.EndReason.EXPIRED, now=now).state != before
    return ended


@platform_work(_PLATFORM)
def end_for_wipe(*, volume_ids: list[int], now: datetime | None = None) -> int:
    """End the open sessions that mount any of `volume_ids` (volumes about to be wiped). Returns how many."""
    now = now or timezone.now()
    sessions = (
        DataAccess.objects.unscoped(_PLATFORM)
        .filter(state=DataAccess.State.OPEN, volumes__in=volume_ids)
        .distinct()
        .order_by("id")
    )
    ended = 0
    for session in sessions:
        data_access_end(session=session, reason=DataAccess.EndReason.WIPED, now=now)
        ended += 1
    return ended


@platform_work(_PLATFORM)
def end_for_due_wipes(*, now: datetime | None = None) -> int:
    """The wipe job, first: end the sessions on volumes whose grace has run out, so that they are wiped."""
    now = now or timezone.now()
    due = list(
        Volume.objects.unscoped(_PLATFORM)
        .filter(state=VolumeState.GRACE, wipe_at__lte=now)
        .values_list("pk", flat=True)
    )
    return end_for_wipe(volume_ids=due, now=now) if due else 0


# --- what the agent is served ----------------------------------------------------------------------------------


def desired_items(server: Server, now: datetime) -> list[dict[str, Any]]:
    """The desired state's `data_access`: one workload item per open session of `server` not past its `ends_at`
    (API.md, Agent side: the shape of a workload, `"lease": null`, `"gpus": []`, its session's id)."""
    sessions = (
        DataAccess.objects.unscoped(_PLATFORM)
        .filter(server=server, state=DataAccess.State.OPEN, ends_at__gt=now, workload__isnull=False)
        .select_related("workload")
        .prefetch_related("volumes")
        .order_by("id")
    )
    items = []
    for session in sessions:
        mounted = sorted(
            (v for v in session.volumes.all() if v.state in (VolumeState.READY, VolumeState.GRACE)),
            key=lambda v: v.name,
        )
        items.append(
            {
                "id": session.workload.pk,
                "lease": None,
                "data_access": session.pk,
                "access": "container",
                "gpus": [],
                "image": settings.SUANLI_DATA_ACCESS_IMAGE,
                "command": [],
                "env": {},
                "ports": [SSH_PORT],
                "ssh_keys": [key["public_key"] for key in session.ssh_keys],
                "limits": dict(LIMITS),
                "user": "root",
                "desired": "running",
                "generation": 0,
                "stop_by": session.ends_at.isoformat(),
                "volumes": [{"id": v.pk, "path": f"/data/{v.name}", "size_gb": v.size_gb} for v in mounted],
                "owner": str(session.organization_id),
            }
        )
    return items
