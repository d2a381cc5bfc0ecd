"""Reads of accounts: a user's memberships, the organisations they see (the staff policy), their API keys."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.access import is_platform_staff
from accounts.models import ApiKey, Membership, Organization, User


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.for_user(user).select_related("organization").order_by("id")


def organizations_visible_to(*, user: User) -> QuerySet[Organization]:
    """Staff see every organisation (the staff policy); everyone else the ones they belong to."""
    if is_platform_staff(user):
        return Organization.objects.unscoped("the staff policy: platform staff read every tenant")
    return Organization.objects.for_user(user).distinct()


def api_keys_for_user(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-id")


def pending_providers() -> QuerySet[Organization]:
    """Provider organisations waiting for staff approval, oldest first (staff pages only)."""
    return (
        Organization.objects.unscoped("the staff policy: platform staff read every tenant")
        .filter(status=Organization.Status.PENDING)
        .exclude(kind=Organization.Kind.CUSTOMER)
        .order_by("created_at", "id")
    )
