"""Access to SSH keys, templates and workloads by id; fails closed (another tenant's object is 404)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.errors import NotFound
from accounts.models import Organization, User
from scheduler.models import Lease
from workloads.models import SshKey, Template, Workload


def _pk(value: object, what: str) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        raise NotFound(f"Unknown {what}.") from None


def ssh_keys_of(user: User) -> QuerySet[SshKey]:
    return SshKey.objects.filter(user=user).order_by("id")


def access_ssh_key(user: User, key_id: object) -> SshKey:
    """One of `user`'s own keys; another user's key (even in the same organisation) is NotFound."""
    key = ssh_keys_of(user).filter(pk=_pk(key_id, "SSH key")).first()
    if key is None:
        raise NotFound("Unknown SSH key.")
    return key


def templates_visible(org: Organization | None) -> QuerySet[Template]:
    """The public catalogue, and `org`'s own templates."""
    scope = Q(organization__isnull=True) if org is None else Q(organization__isnull=True) | Q(organization=org)
    return Template.objects.filter(scope, active=True).order_by("organization_id", "id")


def access_workload(lease: Lease, workload_id: object) -> Workload:
    """`lease`'s workload `workload_id` (the lease already looked up through access_lease), or NotFound."""
    workload = Workload.objects.filter(lease=lease, pk=_pk(workload_id, "workload")).select_related("server").first()
    if workload is None:
        raise NotFound("Unknown workload.")
    return workload
