"""The access layer's common parts: who is asking (`Actor`), the one id parser, the one staff policy.

Each app's `access.py` has an `access_<entity>(actor, id, *, for_update=False)` per tenant-owned entity, built on
`access_one`: the actor's own row, or `NotFound`, with the same message for another tenant's row as for an id that
does not exist, so an id reveals nothing. Lists go through the same scopes (`for_org`, the `*_visible` selectors).

The staff policy, everywhere (API, pages, admin): platform staff (an active `is_staff` account) may *read* every
tenant's objects; they change them only through the staff actions (approve, drain, pay), each checking
`is_platform_staff` itself, never through a tenant's own endpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from accounts.errors import NotFound
from accounts.models import Organization, User

# PostgreSQL's bigint: every primary key fits, and nothing larger reaches the database.
MAX_ID = 2**63 - 1
_ID = re.compile(r"[0-9]{1,19}")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def parse_id(value: object, what: str) -> int:
    """An id from a URL, query or body: ASCII digits, 1..MAX_ID; anything else is `NotFound("Unknown <what>.")`."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if _ID.fullmatch(text) and 0 < int(text) <= MAX_ID:
        return int(text)
    raise NotFound(f"Unknown {what}.")


def is_platform_staff(user: Any) -> bool:
    """The one staff test: an active, signed-in account with `is_staff`."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_staff)


@dataclass(frozen=True)
class Actor:
    """Who is asking: the user, the organisation they act for, and whether the staff policy shows them every
    tenant's rows (`sees_all`)."""

    user: User | None
    org: Organization | None
    sees_all: bool = False

    @classmethod
    def of(cls, request: Any, *, staff_action: bool = False) -> Actor:
        """The request's actor. Staff see every tenant on a read, and in a staff action (approve, pay, ...)."""
        user = getattr(request, "user", None)
        staff = is_platform_staff(user) and (staff_action or request.method in SAFE_METHODS)
        signed_in = user if getattr(user, "is_authenticated", False) else None
        return cls(user=signed_in, org=getattr(request, "org", None), sees_all=staff)

    @classmethod
    def for_org(cls, org: Organization | None, user: User | None = None) -> Actor:
        """Acting for `org` alone (no staff reads): a write, or a page that only ever shows one's own."""
        return cls(user=user, org=org)


STAFF_READS = "the staff policy: platform staff read every tenant"


def visible(queryset: QuerySet, actor: Actor) -> QuerySet:
    """`queryset` (of a tenant-owned model) as `actor` may see it: every tenant's for staff, else their org's."""
    if actor.sees_all:
        return queryset.unscoped(STAFF_READS)
    return queryset.for_org(actor.org)


def access_one(queryset: QuerySet, pk: object, what: str, *, for_update: bool = False) -> Any:
    """The row `pk` of an already scoped `queryset` (locked with `for_update`), or NotFound("Unknown <what>.")."""
    queryset = queryset.filter(pk=parse_id(pk, what))
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    row = queryset.first()
    if row is None:
        raise NotFound(f"Unknown {what}.")
    return row


def access_organization(actor: Actor, org_id: object, *, for_update: bool = False) -> Organization:
    """An organisation the actor belongs to (any one under the staff policy); NotFound otherwise."""
    if actor.sees_all:
        queryset = Organization.objects.unscoped(STAFF_READS)
    else:
        queryset = Organization.objects.for_user(actor.user)
    return access_one(queryset, org_id, "organization", for_update=for_update)
