"""Which organisation a request acts for: `X-Organization` (API), the session choice (pages), or the first."""

from __future__ import annotations

from typing import Any

from accounts.access import parse_id
from accounts.errors import NotFound
from accounts.models import Membership, Organization

SESSION_KEY = "suanli_org_id"


def membership_for(user: Any, org_id: object = None) -> Membership | None:
    """The caller's membership in `org_id` (or their first); None for anonymous users or no memberships.

    An org id that is malformed or not one of the caller's answers 404: another tenant's id looks exactly
    like an unknown one.
    """
    if not getattr(user, "is_authenticated", False):
        return None
    memberships = Membership.objects.for_user(user).select_related("organization").order_by("id")
    if org_id in (None, ""):
        return memberships.first()
    try:
        pk = parse_id(org_id, "organization")
    except NotFound:
        raise NotFound("Unknown organization.", code="organization_not_found") from None
    membership = memberships.filter(organization_id=pk).first()
    if membership is None:
        raise NotFound("Unknown organization.", code="organization_not_found")
    return membership


def attach(request: Any, membership: Membership | None) -> None:
    request.membership = membership
    request.org = membership.organization if membership else None


def org_of(request: Any) -> Organization | None:
    return getattr(request, "org", None)
