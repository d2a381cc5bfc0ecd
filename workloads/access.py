"""Access to SSH keys, templates and workloads by id; fails closed (another tenant's object is 404)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.access import Actor, access_one
from accounts.models import Organization, User
from scheduler.models import Lease
from workloads.models import SshKey, Template, Workload


def ssh_keys_of(user: User) -> QuerySet[SshKey]:
    return SshKey.objects.filter(user=user).order_by("id")


def access_ssh_key(actor: Actor, key_id: object, *, for_update: bool = False) -> SshKey:
    """One of the actor's own keys; another user's key (even in the same organisation) is NotFound."""
    return access_one(ssh_keys_of(actor.user), key_id, "SSH key", for_update=for_update)


def templates_visible(org: Organization | None) -> QuerySet[Template]:
    """The public catalogue, and `org`'s own templates."""
    scope = Q(organization__isnull=True) if org is None else Q(organization__isnull=True) | Q(organization=org)
    public_and_own = Template.objects.unscoped("public templates have no owner; the organisation's own are added")
    return public_and_own.filter(scope, active=True).order_by("organization_id", "id")


def access_template(actor: Actor, template_id: object) -> Template:
    """A public template or one of the actor's organisation's; NotFound otherwise."""
    return access_one(templates_visible(actor.org), template_id, "template")


def access_workload(lease: Lease, workload_id: object, *, for_update: bool = False) -> Workload:
    """`lease`'s workload `workload_id` (the lease already reached through access_lease), or NotFound."""
    workloads = lease.workloads.select_related("server")
    return access_one(workloads, workload_id, "workload", for_update=for_update)
