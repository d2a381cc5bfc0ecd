"""Access to SSH keys, templates, workloads and volumes by id; fails closed (another tenant's object is 404)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.access import Actor, access_one, visible
from accounts.models import Organization, User
from scheduler.models import Lease
from workloads.models import SshKey, Template, Volume, Workload
from workloads.volumes import with_in_use


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


def access_volume(actor: Actor, volume_id: object, *, for_update: bool = False) -> Volume:
    """One of the actor's organisation's volumes (any one for a staff read), with `mounted` (workloads.volumes);
    another tenant's volume is NotFound like a missing id."""
    volumes = with_in_use(visible(Volume.objects.all(), actor)).select_related("server")
    return access_one(volumes, volume_id, "volume", for_update=for_update)
