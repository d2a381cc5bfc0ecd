"""Access to one lease by id; fails closed (another tenant's lease and an unknown id are both 404)."""

from __future__ import annotations

from accounts.errors import NotFound
from accounts.models import Organization
from accounts.tenancy import scoped
from scheduler.models import Lease


def access_lease(org: Organization | None, lease_id: object, *, staff: bool = False) -> Lease:
    """The organisation's lease `lease_id`; any lease for platform staff reading; NotFound otherwise."""
    try:
        pk = int(str(lease_id))
    except (TypeError, ValueError):
        raise NotFound("Unknown lease.") from None
    queryset = Lease.objects.all() if staff else scoped(Lease, org)
    lease = queryset.filter(pk=pk).first()
    if lease is None:
        raise NotFound("Unknown lease.")
    return lease
