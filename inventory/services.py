"""Writes for servers and their GPUs: registration, enrolment tokens, drain, liveness.

Every function here is the one way its change is made; the API, admin actions, Celery tasks, management
commands and `seed_demo` call these, never the models directly.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.errors import InvalidInput, InvalidTransition, NotAllowed
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import Gpu, GpuModel, Server, ServerOutage

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "the server was reached through the access layer (or by its agent's credential)"

ENROLLMENT_TOKEN_PREFIX = "enr_"  # noqa: S105 (a prefix, not a secret)


def enrollment_token_hash(token: str) -> str:
    """The SHA-256 hex digest stored for an enrolment token (the agent side hashes the same way)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_enrollment_token() -> tuple[str, str]:
    token = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, enrollment_token_hash(token)


def _enrollment_expiry(now: datetime) -> datetime:
    return now + timedelta(hours=settings.SUANLI_ENROLLMENT_TOKEN_TTL_HOURS)


def server_register(
    *,
    org: Organization,
    name: str,
    region: str,
    gpu_model: GpuModel,
    gpu_count: int,
    cpu_cores: int,
    ram_gb: int,
    disk_gb: int,
    site: str = "",
    network_gbps: int | None = None,
    interconnect: str = "",
    runtime: str = "docker",
    public_host: str = "",
    port_range_start: int = 40000,
    port_range_end: int = 40999,
    volume_disk_gb: int = 0,
) -> tuple[Server, str]:
    """Register a provider's server, waiting for its agent; returns it and its enrolment token. `volume_disk_gb`
    is the disk it lends for customers' volumes (workloads.volumes; 0: none).

    The token is returned once and only its SHA-256 hash is stored, with an expiry of
    SUANLI_ENROLLMENT_TOKEN_TTL_HOURS. `interconnect` defaults to the GPU model's. A pending provider may
    register (its offers are what stay unlisted). A name already used in the organisation is refused by the
    database's unique constraint, reported as a field error; nothing is created then.
    """
    if not org.is_provider:
        raise NotAllowed("Only provider organizations can register servers.")
    if not gpu_model.active:
        raise InvalidInput("This GPU model is no longer offered.", fields={"gpu_model": ["Inactive GPU model."]})
    name = name.strip()
    now = timezone.now()
    token, token_hash = _new_enrollment_token()
    server = Server(
        organization=org,
        name=name,
        region=region.strip(),
        site=site.strip(),
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        cpu_cores=cpu_cores,
        ram_gb=ram_gb,
        disk_gb=disk_gb,
        interconnect=interconnect or gpu_model.interconnect,
        runtime=runtime,
        public_host=public_host.strip(),
        port_range_start=port_range_start,
        port_range_end=port_range_end,
        volume_disk_gb=volume_disk_gb,
        status=Server.Status.PENDING_ENROLLMENT,
        enrollment_token_hash=token_hash,
        enrollment_expires_at=_enrollment_expiry(now),
    )
    if network_gbps is not None:
        server.network_gbps = network_gbps
    _save_new_server(server)
    return server, token


def _save_new_server(server: Server) -> None:
    """Save a newly registered server; a name already used in its organisation is a field error."""
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError as exc:
        if "server_name_unique_per_org" in str(exc):
            raise InvalidInput(
                "A server with this name already exists in your organization.",
                code="duplicate_name",
                fields={"name": ["A server with this name already exists in your organization."]},
            ) from None
        raise


@platform_work(_PLATFORM)
def server_enrollment_token_issue(*, server: Server) -> tuple[Server, str]:
    """A fresh enrolment token; the previous one stops working at once.

    For an enrolled server it is how a reinstalled agent enrols again (`suanli-agent enroll --force`): the
    running agent's credentials stay valid until the new enrolment rotates them, and the new agent must
    report the same cards. One conditional UPDATE replaces the stored hash; a retired server gets none
    (409 `invalid_state`).
    """
    now = timezone.now()
    token, token_hash = _new_enrollment_token()
    updated = (
        Server.objects.filter(pk=server.pk)
        .exclude(status=Server.Status.RETIRED)
        .update(enrollment_token_hash=token_hash, enrollment_expires_at=_enrollment_expiry(now))
    )
    if not updated:
        raise InvalidTransition("This server is retired; it cannot enrol an agent again.")
    server.refresh_from_db()
    return server, token


@platform_work(_PLATFORM)
def server_drain(*, server: Server, reason: str = "") -> Server:
    """Stop new leases on the server (running ones go on). Idempotent: draining again keeps the first
    time and reason."""
    Server.objects.filter(pk=server.pk, drained=False).update(
        drained=True, drained_reason=reason[:200], drained_at=timezone.now()
    )
    server.refresh_from_db()
    return server


# Checks a layer above runs before a server lends less disk for volumes, with the server row locked (workloads
# registers what its volumes take: workloads/apps.py); one that raises refuses the change.
_volume_disk_checks: list[Callable[[Server, int], None]] = []


def volume_disk_check_register(check: Callable[[Server, int], None]) -> None:
    if check not in _volume_disk_checks:
        _volume_disk_checks.append(check)


@platform_work(_PLATFORM)
def server_volume_disk_set(*, server: Server, volume_disk_gb: Any) -> Server:
    """Lend `volume_disk_gb` GB of the server's disk for customers' volumes (0: none). 400 on `volume_disk_gb` for
    anything but a whole number from 0 to the server's `disk_gb`; 409 `volume_disk_in_use` below what its volumes
    take (the registered check). Decided under a lock of the server row, the one a new volume's creation takes,
    so no volume slips in between. Idempotent."""
    if isinstance(volume_disk_gb, bool) or not isinstance(volume_disk_gb, int) or volume_disk_gb < 0:
        message = "A whole number of GB, 0 or more."
        raise InvalidInput(message, fields={"volume_disk_gb": [message]})
    with transaction.atomic():
        locked = Server.objects.select_for_update().get(pk=server.pk)
        if volume_disk_gb > locked.disk_gb:
            message = f"At most the server's disk, {locked.disk_gb} GB."
            raise InvalidInput(message, fields={"volume_disk_gb": [message]})
        if volume_disk_gb < locked.volume_disk_gb:
            for check in _volume_disk_checks:
                check(locked, volume_disk_gb)
        if locked.volume_disk_gb != volume_disk_gb:
            locked.volume_disk_gb = volume_disk_gb
            locked.save(update_fields=["volume_disk_gb"])
    return locked


@platform_work(_PLATFORM)
def server_undrain(*, server: Server) -> Server:
    """Accept new leases on the server again. Idempotent."""
    Server.objects.filter(pk=server.pk, drained=True).update(drained=False, drained_reason="", drained_at=None)
    server.refresh_from_db()
    return server


@platform_work(_PLATFORM)
def gpu_drain(*, gpu: Gpu, reason: str = "") -> Gpu:
    """Stop new leases on one card (leases holding it go on). Idempotent: draining again keeps the first reason,
    like a card the health rules drained (inventory/health.py)."""
    Gpu.objects.filter(pk=gpu.pk, drained=False).update(drained=True, drained_reason=reason[:200])
    gpu.refresh_from_db()
    return gpu


@platform_work(_PLATFORM)
def gpu_undrain(*, gpu: Gpu) -> Gpu:
    """Accept new leases on the card again. Idempotent. Its health is the agent's to report: a failed card stays
    out of every allocation until a report shows it healthy, drained or not."""
    Gpu.objects.filter(pk=gpu.pk, drained=True).update(drained=False, drained_reason="")
    gpu.refresh_from_db()
    return gpu


def _gpu_problem(index: int, field: str, message: str) -> InvalidInput:
    return InvalidInput(f"gpus[{index}]: {message}", fields={"gpus": {str(index): {field: [message]}}})


def _checked_cards(server: Server, gpus: list[dict[str, Any]]) -> set[str]:
    """The uuids of the cards an agent reported, once they pass `gpus_register`'s checks (count, index, uuid,
    no card twice, the server's GPU model); the first failing check is raised."""
    if not gpus:
        raise InvalidInput("The agent reported no GPUs.", fields={"gpus": ["At least one GPU is required."]})
    if len(gpus) > server.gpu_count:
        raise InvalidInput(
            f"The agent reported {len(gpus)} GPUs but the server was registered with {server.gpu_count}.",
            code="gpu_count_mismatch",
            fields={"gpus": [f"At most {server.gpu_count} GPUs."]},
        )
    model = server.gpu_model
    seen_indexes: set[int] = set()
    seen_uuids: set[str] = set()
    for position, card in enumerate(gpus):
        index, uuid, name = card.get("index"), str(card.get("uuid") or "").strip(), str(card.get("name") or "")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 64:
            raise _gpu_problem(position, "index", "A GPU index from 0 to 63 is required.")
        if not uuid or len(uuid) > 80:
            raise _gpu_problem(position, "uuid", "A GPU uuid is required.")
        if index in seen_indexes or uuid in seen_uuids:
            raise _gpu_problem(position, "uuid", "A GPU appears twice.")
        seen_indexes.add(index)
        seen_uuids.add(uuid)
        if not model.matches_nvml_name(name):
            raise InvalidInput(
                f"gpus[{position}] is a {name!r}, not a {model.name} ({', '.join(model.nvml_names) or 'no names'}).",
                code="gpu_model_mismatch",
                fields={"gpus": {str(position): {"name": [f"Expected one of: {', '.join(model.nvml_names)}."]}}},
            )
    return seen_uuids


@platform_work(_PLATFORM)
def gpus_register(*, server: Server, gpus: list[dict[str, Any]]) -> list[Gpu]:
    """Record the cards an agent found on `server`; all or nothing.

    Each card's NVML product name must be one of `server.gpu_model.nvml_names` (case and spacing ignored),
    there may be no more cards than `server.gpu_count`, and indexes and uuids must be unique. The first
    registration creates the Gpu rows; a later one (re-enrolment) must report the same set of uuids and
    refreshes their index, name and memory. Locks the server row for the duration, so two enrolments of
    one server cannot interleave. Call inside the enrolment's transaction.
    """
    seen_uuids = _checked_cards(server, gpus)
    with transaction.atomic():
        Server.objects.select_for_update().filter(pk=server.pk).first()
        existing = {gpu.uuid: gpu for gpu in Gpu.objects.filter(server=server)}
        if existing and set(existing) != seen_uuids:
            raise InvalidInput(
                "These are not the GPUs this server enrolled with; ask support to re-register the server.",
                code="gpus_changed",
                fields={"gpus": ["The set of GPU uuids differs from the enrolled one."]},
            )
        taken = Gpu.objects.filter(uuid__in=seen_uuids).exclude(server=server).values_list("uuid", flat=True)
        if taken:
            raise InvalidInput(
                "A GPU uuid is already registered to another server.",
                code="gpu_uuid_taken",
                fields={"gpus": ["GPU uuid already registered elsewhere."]},
            )
        if existing:
            # Indexes may be renumbered: move every card out of the way first, so the
            # (server, index) unique constraint holds after each single-row UPDATE.
            Gpu.objects.filter(server=server).update(index=F("index") + 1000)
        rows = []
        for card in gpus:
            uuid = str(card["uuid"]).strip()
            values = {
                "index": card["index"],
                "name": str(card.get("name") or "")[:100],
                "memory_total_mb": card.get("memory_total_mb"),
                "serial": str(card.get("serial") or "")[:80],
            }
            if uuid in existing:
                Gpu.objects.filter(pk=existing[uuid].pk).update(**values)
                rows.append(existing[uuid].pk)
            else:
                rows.append(Gpu.objects.create(server=server, uuid=uuid, **values).pk)
    return list(Gpu.objects.filter(pk__in=rows).order_by("index"))


@platform_work(_PLATFORM)
def server_enroll(*, server: Server, hostname: str, gpus: list[dict[str, Any]], now: datetime | None = None) -> Server:
    """Mark `server` enrolled with the cards its agent reported: GPUs registered (see `gpus_register`),
    the enrolment token spent, hostname recorded, status online and seen now. All or nothing; locks the
    server row. The agent credentials are the enrolment endpoint's business, not this function's.
    """
    now = now or timezone.now()
    with transaction.atomic():
        gpus_register(server=server, gpus=gpus)
        Server.objects.filter(pk=server.pk).update(
            enrollment_token_hash="",
            enrollment_expires_at=None,
            hostname=hostname[:255],
            enrolled_at=server.enrolled_at or now,
            last_seen_at=now,
            status=Server.Status.ONLINE,
        )
    server.refresh_from_db()
    return server


def server_mark_seen(*, server_id: int, now: datetime | None = None) -> bool:
    """Record that the server's agent was heard from: `last_seen_at = now`, status online.

    One conditional UPDATE; only an enrolled, not retired server changes, and `last_seen_at` never moves
    backwards (a late, spooled report does not undo a newer one). Returns whether a row changed.
    """
    now = now or timezone.now()
    changed = bool(
        Server.objects.filter(pk=server_id, enrolled_at__isnull=False)
        .exclude(status=Server.Status.RETIRED)
        .filter(Q(last_seen_at__isnull=True) | Q(last_seen_at__lte=now))
        .update(last_seen_at=now, status=Server.Status.ONLINE)
    )
    if changed:
        server_outages_close(server_id=server_id, now=now)
    return changed


def agent_silence_limit() -> timedelta:
    """How long an online server's agent may stay silent before the server counts as unreachable."""
    return timedelta(seconds=settings.SUANLI_AGENT_SILENT_INTERVALS * settings.SUANLI_AGENT_INTERVAL_SECONDS)


def servers_mark_unreachable(*, now: datetime | None = None) -> int:
    """Mark every ONLINE server silent for longer than `agent_silence_limit()` UNREACHABLE, and open an outage
    for it from its last report (billing does not charge leased cards for it).

    Rows are claimed with SKIP LOCKED and changed by a conditional UPDATE, so it is idempotent and safe to run
    from several workers at once; a server whose agent reports in between is not touched. Returns how many
    servers changed.
    """
    now = now or timezone.now()
    cutoff = now - agent_silence_limit()
    with transaction.atomic():
        silent = dict(
            Server.objects.select_for_update(skip_locked=True)
            .filter(status=Server.Status.ONLINE)
            .filter(Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True))
            .values_list("pk", "last_seen_at")
        )
        if not silent:
            return 0
        changed = Server.objects.filter(pk__in=list(silent), status=Server.Status.ONLINE).update(
            status=Server.Status.UNREACHABLE
        )
        ServerOutage.objects.bulk_create(
            [ServerOutage(server_id=pk, started_at=seen or now) for pk, seen in silent.items()],
            ignore_conflicts=True,
        )
    return changed


def server_outages_close(*, server_id: int, now: datetime) -> None:
    """The server reported again: its open outage (if any) ends now."""
    ServerOutage.objects.filter(server_id=server_id, ended_at__isnull=True).update(ended_at=now)
