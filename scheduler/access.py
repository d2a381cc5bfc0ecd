"""Access to one lease by id; fails closed (another tenant's lease and an unknown id are both 404)."""

from __future__ import annotations

from accounts.access import Actor, access_one, visible
from scheduler.models import Lease


def access_lease(actor: Actor, lease_id: object, *, for_update: bool = False) -> Lease:
    """The actor's organisation's lease `lease_id` (any lease for a staff read); NotFound otherwise."""
    return access_one(visible(Lease.objects.all(), actor), lease_id, "lease", for_update=for_update)
