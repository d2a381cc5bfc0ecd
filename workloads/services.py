"""The customer's writes of workloads: SSH keys, templates, the checked workload of a new lease, leases made with
a workload, and restart and stop. What an agent is served and reports is workloads.agent_channel; the periodic
check is workloads.checks.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.access import Actor
from accounts.errors import InvalidInput, InvalidTransition, NotFound
from accounts.models import Organization, User
from accounts.tenancy import platform_work
from inventory.models import Runtime
from scheduler import services as scheduler
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan
from workloads import sshkeys, volumes
from workloads.access import access_template, ssh_keys_of
from workloads.models import Access, SshKey, Template, Workload, WorkloadSpec, WorkloadState

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
        try:
            template = access_template(Actor.for_org(org), data["template"])
        except NotFound:
            raise InvalidInput("Unknown template.", fields={"workload": {"template": ["Unknown template."]}}) from None
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
    in one transaction: a lease with a workload is placed only on servers whose agent runs it that way.

    A workload that mounts volumes (workloads.volumes) pins the lease to their server: the volumes are locked and
    checked (the organisation's, live, not in grace, mounted by no other live lease; 400/409 otherwise), the lease
    is placed on that server alone, and the mounts are stored with the spec."""
    request = workload_request(org=org, user=user, plan=lease["plan"], data=workload) if workload else None
    mounts = volumes.mounts_parse(workload.get("volumes")) if workload else []
    if mounts and request is not None and request.access == Access.HOST:
        volumes.host_paths_check(mounts)  # on the server itself, for the lease user: never over the system's dirs
    with transaction.atomic():
        if request is None:
            return scheduler.lease_create(org=org, **lease)
        host = request.access == Access.HOST
        locked = volumes.mounts_lock(org=org, mounts=mounts)
        if locked:
            lease["server"] = _volume_server(locked[0][0].server, lease)
        made = scheduler.lease_create(
            org=org, runtime=Runtime.HOST if host else Runtime.DOCKER, host_access=host, **lease
        )
        spec = WorkloadSpec.objects.create(
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
        volumes.mounts_create(spec=spec, mounts=locked)
        servers = sorted(set(Allocation.objects.filter(lease=made).values_list("server_id", flat=True)))
        Workload.objects.bulk_create(
            [Workload(lease=made, server_id=s, created_at=made.start_at) for s in servers], ignore_conflicts=True
        )
    return made


def _volume_server(server, lease: dict[str, Any]):
    """The server a lease whose workload mounts volumes must run on: theirs. A different `server` or `offer` in
    the request, or more than one server, is a 400."""
    named = lease.get("offer").server_id if lease.get("offer") is not None else None
    named = named or (lease["server"].pk if lease.get("server") is not None else None)
    if named is not None and named != server.pk:
        raise volumes.mount_error("The volumes are on another server than the one asked for.")
    if (lease.get("servers") or 1) > 1:
        raise volumes.mount_error("A lease with volumes runs on their one server.")
    return server


# --- the customer's verbs --------------------------------------------------------------------------------------


def _live_workload(workload: Workload) -> Workload:
    locked = Workload.objects.select_for_update(of=("self",)).select_related("lease").get(pk=workload.pk)
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
