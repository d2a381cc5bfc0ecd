from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import ApiKey, Membership, Organization, User


def memberships_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization").order_by("id")


def organizations_visible_to(*, user: User) -> QuerySet[Organization]:
    """Staff see every organisation; everyone else the ones they belong to."""
    if user.is_staff:
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user).distinct()


def api_keys_for_user(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-id")
