"""Every write of workloads: SSH keys, templates, leases made with a workload, the desired state served to agents
(with the card-cleaning bookkeeping), the states agents report, restart and stop, and the periodic check.

Cleaning: a card named in a workload served to an agent is marked `needs_cleaning`; once it is in no workload of
its server any more, it is stamped with the desired-state version that left it out (`clean_after_version`), and it
becomes allocatable again only when the agent reports it has applied that version (everything of the workload
gone). A card not reported clean within SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS is drained for the provider.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import slugify

from accounts.errors import InvalidInput, InvalidTransition
from accounts.inputs import clean_text
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from inventory.models import Gpu, Runtime, Server
from scheduler import services as scheduler
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan
from workloads import sshkeys
from workloads.access import ssh_keys_of, templates_visible
from workloads.models import Access, DesiredVersion, SshKey, Template, Workload, WorkloadSpec, WorkloadState

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "a workload spans its lease and the provider's server; an agent reaches only its own server"

logger = logging.getLogger(__name__)

NOTEBOOK_PORT = 8888
MAX_KEYS_PER_USER = 50
MAX_PORTS = 10
MAX_ENV = 64
ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# Set by the platform for every workload; a customer's env may not override them.
RESERVED_ENV = frozenset({"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "PUBLIC_KEY", "JUPYTER_TOKEN"})
# States in which the agent still holds something of the workload (or has not told us it is gone).
LIVE_STATES = frozenset(
    {
        WorkloadState.PENDING,
        WorkloadState.PULLING,
        WorkloadState.STARTING,
        WorkloadState.RUNNING,
        WorkloadState.EXITED,
        WorkloadState.STOPPING,
    }
)


# --- SSH keys --------------------------------------------------------------------------------------------------


def ssh_key_add(*, user: User, name: str, public_key: str) -> SshKey:
    """Add a validated public key to `user`'s account. The same key twice is a field error."""
    parsed = sshkeys.parse_public_key(public_key)
    comment = parsed.text.split(" ", 2)[2] if parsed.text.count(" ") >= 2 else ""
    name = ((name or "").strip() or comment or parsed.key_type)[:100]
    if SshKey.objects.filter(user=user).count() >= MAX_KEYS_PER_USER:
        raise InvalidInput(f"At most {MAX_KEYS_PER_USER} keys per account.", fields={"public_key": ["Too many keys."]})
    try:
        with transaction.atomic():
            return SshKey.objects.create(
                user=user,
                name=name,
                public_key=parsed.text,
                key_type=parsed.key_type,
                bits=parsed.bits,
                fingerprint=parsed.fingerprint,
            )
    except IntegrityError:
        message = f"This key ({parsed.fingerprint}) is already on your account."
        raise InvalidInput(message, code="duplicate_key", fields={"public_key": [message]}) from None


def ssh_key_delete(*, key: SshKey) -> None:
    """Remove a key from the account. Leases made with it keep it until they end (their spec holds a copy)."""
    SshKey.objects.filter(pk=key.pk).delete()


# --- templates -------------------------------------------------------------------------------------------------


def template_create(*, org: Organization | None, **fields: Any) -> Template:
    """A private template of `org` (or, for staff, a public one with org None). The slug is unique per owner."""
    fields.setdefault("slug", _slug(fields.get("name", "")))
    _check_image(fields.get("image", ""), field="image")
    fields["ports"] = _clean_ports(fields.get("ports") or [])
    fields["env"] = _clean_env(fields.get("env") or {})
    fields["command"] = _clean_command(fields.get("command") or [])
    try:
        with transaction.atomic():
            return Template.objects.create(organization=org, **fields)
    except IntegrityError:
        message = "A template with this name already exists."
        raise InvalidInput(message, code="duplicate_name", fields={"name": [message]}) from None


def _slug(name: str) -> str:
    return slugify(name)[:60] or "template"


# --- validation of a workload request --------------------------------------------------------------------------


def _check_image(image: str, *, field: str = "workload") -> str:
    image = (image or "").strip()
    # An image reference: [registry[:port]/]name[:tag][@sha256:digest], no spaces or shell characters.
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@")
    if not image or len(image) > 255 or not set(image) <= allowed or image[0] in "-./:@":
        message = "Not a valid image reference."
        # A lease's workload: fields.workload.image; a template's own image: fields.image.
        raise InvalidInput(message, fields={field: {"image": [message]} if field == "workload" else [message]})
    return image


def _clean_ports(ports: Any) -> list[int]:
    if not isinstance(ports, list) or len(ports) > MAX_PORTS:
        raise InvalidInput(f"At most {MAX_PORTS} ports.", fields={"workload": {"ports": [f"At most {MAX_PORTS}."]}})
    clean: list[int] = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput("Ports are numbers 1-65535.", fields={"workload": {"ports": ["Numbers 1-65535."]}})
        if port not in clean:
            clean.append(port)
    return clean


def _clean_env(env: Any) -> dict[str, str]:
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise InvalidInput("env is an object of at most 64 names.", fields={"workload": {"env": ["Too many."]}})
    clean: dict[str, str] = {}
    for name, value in env.items():
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 128
            or not set(name) <= ENV_NAME_CHARS
            or name[0].isdigit()
            or not isinstance(value, str)
            or len(value) > 4096
            or "\x00" in value
        ):
            message = f"{str(name)[:40]!r}: names are letters, digits and _; values are strings up to 4096 characters."
            raise InvalidInput(message, fields={"workload": {"env": [message]}})
        if name in RESERVED_ENV or name.startswith("SUANLI_"):
            message = f"{name} is set by the platform."
            raise InvalidInput(message, fields={"workload": {"env": [message]}})
        clean[name] = value
    return clean


def _clean_command(command: Any) -> list[str]:
    if not isinstance(command, list) or len(command) > 64:
        raise InvalidInput("command is a list of strings.", fields={"workload": {"command": ["A list of strings."]}})
    for part in command:
        if not isinstance(part, str) or len(part) > 4096 or "\x00" in part:
            raise InvalidInput(
                "command is a list of strings.", fields={"workload": {"command": ["A list of strings."]}}
            )
    return list(command)


@dataclass(frozen=True)
class WorkloadRequest:
    """A validated workload of a new lease."""

    access: str
    template: Template | None
    image: str
    command: list[str]
    env: dict[str, str]
    ports: list[int]
    ssh_keys: list[dict[str, str]]
    disk_gb: int


@platform_work(_PLATFORM)
def workload_request(*, org: Organization, user: User, plan: str, data: dict[str, Any]) -> WorkloadRequest:
    """Check a lease's `workload` object (API.md): a template of the catalogue or the organisation's, or an image;
    the caller's own keys; host access only for server_month. InvalidInput with `fields.workload` otherwise."""
    access = data.get("access") or Access.CONTAINER
    if access not in Access.values:
        raise InvalidInput("access is container or host.", fields={"workload": {"access": ["container or host."]}})
    template = None
    if data.get("template") is not None:
        template = templates_visible(org).filter(pk=data["template"]).first()
        if template is None:
            raise InvalidInput("Unknown template.", fields={"workload": {"template": ["Unknown template."]}})
    keys = list(ssh_keys_of(user).filter(pk__in=data.get("ssh_keys") or []))
    if len(keys) != len(set(data.get("ssh_keys") or [])):
        raise InvalidInput("Unknown SSH key.", fields={"workload": {"ssh_keys": ["Not one of your keys."]}})
    key_copies = [{"name": k.name, "fingerprint": k.fingerprint, "public_key": k.public_key} for k in keys]
    if access == Access.HOST:
        if plan != Plan.SERVER_MONTH:
            message = "Host access comes with server_month leases only."
            raise InvalidInput(message, fields={"workload": {"access": [message]}})
        if template is not None or data.get("image"):
            message = "Host access runs no image."
            raise InvalidInput(message, fields={"workload": {"image": [message]}})
        if not key_copies:
            message = "Host access needs at least one SSH key."
            raise InvalidInput(message, fields={"workload": {"ssh_keys": [message]}})
        return WorkloadRequest(access, None, "", [], {}, [22], key_copies, int(data.get("disk_gb") or 0))
    if template is None and not data.get("image"):
        message = "Name a template or an image."
        raise InvalidInput(message, fields={"workload": {"template": [message]}})
    image = _check_image(data.get("image") or (template.image if template else ""))
    command = _clean_command(
        data["command"] if data.get("command") is not None else (template.command if template else [])
    )
    env = {**(template.env if template else {}), **_clean_env(data.get("env") or {})}
    ports = _clean_ports(data["ports"] if data.get("ports") is not None else (template.ports if template else [22]))
    minimum = template.min_disk_gb if template else 10
    disk_gb = data.get("disk_gb") or minimum
    if isinstance(disk_gb, bool) or not isinstance(disk_gb, int) or not minimum <= disk_gb <= 100_000:
        message = f"At least {minimum} GB (the template's minimum), at most 100000."
        raise InvalidInput(message, fields={"workload": {"disk_gb": [message]}})
    return WorkloadRequest(access, template, image, command, env, ports, key_copies, disk_gb)


# --- leases with a workload ------------------------------------------------------------------------------------


@platform_work(_PLATFORM)
def lease_create(*, org: Organization, user: User, workload: dict[str, Any] | None = None, **lease: Any) -> Lease:
    """Create a lease (scheduler.services.lease_create) and, when asked, its workload on every server it spans,
    in one transaction: a lease with a workload is placed only on servers whose agent runs it that way."""
    request = workload_request(org=org, user=user, plan=lease["plan"], data=workload) if workload else None
    with transaction.atomic():
        if request is None:
            return scheduler.lease_create(org=org, **lease)
        host = request.access == Access.HOST
        made = scheduler.lease_create(
            org=org, runtime=Runtime.HOST if host else Runtime.DOCKER, host_access=host, **lease
        )
        WorkloadSpec.objects.create(
            lease=made,
            access=request.access,
            template=request.template,
            image=request.image,
            command=request.command,
            env=request.env,
            ports=request.ports,
            ssh_keys=request.ssh_keys,
            disk_gb=request.disk_gb,
            notebook_token=secrets.token_urlsafe(24) if NOTEBOOK_PORT in request.ports else "",
        )
        servers = sorted(set(Allocation.objects.filter(lease=made).values_list("server_id", flat=True)))
        Workload.objects.bulk_create(
            [Workload(lease=made, server_id=s, created_at=made.start_at) for s in servers], ignore_conflicts=True
        )
    return made


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
        .select_related("gpu")
        .order_by("lease_id", "gpu__index")
    )
    cards: dict[int, list[str]] = defaultdict(list)
    ends: dict[int, list[datetime | None]] = defaultdict(list)
    for allocation in live:
        cards[allocation.lease_id].append(allocation.gpu.uuid)
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
        Gpu.objects.filter(server=server, needs_cleaning=True, clean_after_version__isnull=True).exclude(
            uuid__in=served
        ).update(clean_after_version=version, clean_requested_at=now)
    return {"version": version, **body}


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
    failed before it ever ran; and the cards the applied version leaves clean. A workload reported as it was last
    time is not written again. Returns the workloads updated."""
    now = now or timezone.now()
    at = _report_time(report.get("sent_at"), now)
    entries = {entry["id"]: entry for entry in report.get("workloads") or []}
    updated = 0
    failed: list[tuple[Lease, str]] = []
    with transaction.atomic():
        rows = (
            Workload.objects.select_for_update()
            .filter(server=server, pk__in=list(entries))
            .select_related("lease")
            .order_by("pk")
        )
        for workload in rows:
            entry = entries[workload.pk]
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
                continue  # the same as the last report: nothing to write
            for name, value in fields.items():
                setattr(workload, name, value)
            workload.save(update_fields=list(fields))
            updated += 1
            if not changed:
                continue
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
    for lease, reason in failed:
        scheduler.lease_fail(lease=lease, reason=f"workload failed: {reason}", now=now)
    return updated


def _charged_from_usable(lease: Lease) -> bool:
    """Whether billing charges `lease` from its workload's first running report (card-hour and interruptible)."""
    return lease.plan == Plan.CARD_HOUR or lease.interruptible


def parse_workload_report(payload: dict[str, Any]) -> dict[str, Any]:
    """The workload fields of a report body, checked; InvalidInput on a bad shape (the report is then refused)."""
    out: dict[str, Any] = {}
    version = payload.get("workloads_version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
            raise InvalidInput("workloads_version must be a non-negative integer.")
        out["workloads_version"] = version
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


# --- the customer's verbs --------------------------------------------------------------------------------------


def _live_workload(workload: Workload) -> Workload:
    locked = Workload.objects.select_for_update().select_related("lease").get(pk=workload.pk)
    if locked.lease.state != LeaseState.ACTIVE:
        raise InvalidTransition("The lease is not active.", code="invalid_state")
    if not Allocation.objects.filter(
        lease=locked.lease, server=locked.server, period__contains=timezone.now()
    ).exists():
        raise InvalidTransition("The lease holds no cards on this server any more.", code="invalid_state")
    return locked


@platform_work(_PLATFORM)
def workload_restart(*, workload: Workload, now: datetime | None = None) -> Workload:
    """Start the workload again (a stopped or exited one too): the agent restarts it with the same spec."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _live_workload(workload)
        locked.generation += 1
        locked.desired = Workload.Desired.RUNNING
        locked.save(update_fields=["generation", "desired"])
        scheduler.lease_event_add(
            lease=locked.lease, kind=LeaseEvent.Kind.WORKLOAD, now=now, workload=locked.pk, action="restart"
        )
    return locked


@platform_work(_PLATFORM)
def workload_stop(*, workload: Workload, now: datetime | None = None) -> Workload:
    """Stop the workload without ending the lease (its cards stay held, and charged). Idempotent."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _live_workload(workload)
        if locked.desired != Workload.Desired.STOPPED:
            locked.desired = Workload.Desired.STOPPED
            locked.save(update_fields=["desired"])
            scheduler.lease_event_add(
                lease=locked.lease, kind=LeaseEvent.Kind.WORKLOAD, now=now, workload=locked.pk, action="stop"
            )
    return locked


# --- the periodic check ----------------------------------------------------------------------------------------


def workloads_check(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job (beat every 30 s, `manage.py check_workloads`): fail card-hour leases whose workload is
    not running within the start timeout (uncharged), and drain cards not reported clean within the clean
    timeout. Idempotent; safe to run concurrently (lease_fail locks and re-checks the lease)."""
    now = now or timezone.now()
    start_deadline = now - timedelta(seconds=settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS)
    late = (
        Workload.objects.filter(lease__state=LeaseState.ACTIVE, started_at__isnull=True, created_at__lt=start_deadline)
        .filter(Q(lease__plan=Plan.CARD_HOUR) | Q(lease__interruptible=True))
        .exclude(state=WorkloadState.CLEANED)
        # A lease that has run somewhere (and been charged) is not failed for a slow start after a failover.
        .exclude(lease__workloads__started_at__isnull=False)
        .select_related("lease")
        .order_by("lease_id")
    )
    failed = 0
    for workload in late:
        minutes = settings.SUANLI_WORKLOAD_START_TIMEOUT_SECONDS // 60
        reason = f"the workload was not running within {minutes} minutes ({workload.state})"
        failed += scheduler.lease_fail(lease=workload.lease, reason=reason, now=now)
    clean_deadline = now - timedelta(seconds=settings.SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS)
    drained = Gpu.objects.filter(needs_cleaning=True, drained=False, clean_requested_at__lt=clean_deadline).update(
        drained=True, drained_reason="automatic: not reported clean after a workload ended"
    )
    return {"failed": failed, "drained_unclean": drained}
