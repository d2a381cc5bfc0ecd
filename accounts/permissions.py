"""Role checks inside the caller's own organisation (403: it is their tenant, they may not do this)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import BasePermission

from accounts.access import STAFF_READS, is_platform_staff
from accounts.models import Organization, Role
from accounts.tenancy import platform_work

MANAGE_ORG = (Role.OWNER, Role.ADMIN)
OPERATE = (Role.OWNER, Role.ADMIN, Role.MEMBER)
BILLING = (Role.OWNER, Role.ADMIN, Role.BILLING)


def has_role(request, roles) -> bool:
    membership = getattr(request, "membership", None)
    return membership is not None and membership.role in roles


def can_operate(request: HttpRequest) -> bool:
    """Whether the caller's role may change things in their organisation (servers, offers, leases), as in the API."""
    return has_role(request, OPERATE)


def require_operate(request: HttpRequest) -> None:
    """Pages that change something: 403 for a role that may only read (billing)."""
    if not can_operate(request):
        raise PermissionDenied


def provider_org(request: HttpRequest) -> Organization:
    """The caller's provider organisation; a customer organisation (or none) has no provider pages (403)."""
    org: Organization | None = getattr(request, "org", None)
    if org is None or not org.is_provider:
        raise PermissionDenied
    return org


class HasOrganization(BasePermission):
    message = "You need to belong to an organization for this."

    def has_permission(self, request, view) -> bool:
        return getattr(request, "org", None) is not None


def role_required(*roles: str) -> type[BasePermission]:
    """A permission class allowing only members with one of `roles`, for unsafe methods."""

    class RoleRequired(BasePermission):
        message = f"This needs one of the roles: {', '.join(roles)}."

        def has_permission(self, request, view) -> bool:
            if request.method in ("GET", "HEAD", "OPTIONS"):
                return True
            return has_role(request, roles)

    return RoleRequired


class IsProvider(BasePermission):
    message = "Only provider organizations can do this."

    def has_permission(self, request, view) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        org = getattr(request, "org", None)
        return org is not None and org.is_provider


class IsStaff(BasePermission):
    message = "Only platform staff can do this."

    def has_permission(self, request, view) -> bool:
        return is_platform_staff(request.user)


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Staff pages: log in first; then platform staff only (403 for everyone else), who read the whole fleet and
    every tenant's money there (the staff policy, accounts/access.py)."""

    @wraps(view)
    @login_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_platform_staff(request.user):
            raise PermissionDenied
        with platform_work(STAFF_READS):
            return view(request, *args, **kwargs)

    return wrapped
