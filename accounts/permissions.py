"""Role checks inside the caller's own organisation (403: it is their tenant, they may not do this)."""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts.models import Role

MANAGE_ORG = (Role.OWNER, Role.ADMIN)
OPERATE = (Role.OWNER, Role.ADMIN, Role.MEMBER)
BILLING = (Role.OWNER, Role.ADMIN, Role.BILLING)


def has_role(request, roles) -> bool:
    membership = getattr(request, "membership", None)
    return membership is not None and membership.role in roles


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
        return bool(request.user and request.user.is_staff)
