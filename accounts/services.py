"""Writes for users, organisations, memberships and API keys."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts import keys
from accounts.errors import (
    Conflict,
    InvalidInput,
    InvalidTransition,
    NotAllowed,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.throttling import hit, unhit


def organization_create(*, user: User, name: str, kind: str, currency: str = "USD") -> Organization:
    """A new organisation with `user` as its owner. Providers start `pending` until staff approve them."""
    status = Organization.Status.PENDING if kind != Organization.Kind.CUSTOMER else Organization.Status.ACTIVE
    with transaction.atomic():
        org = Organization.objects.create(name=name.strip(), kind=kind, status=status, currency=currency)
        Membership.objects.create(organization=org, user=user, role=Role.OWNER)
    return org


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _account_ident(email: str) -> str:
    # The cache key names no e-mail address.
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def api_token_issue(*, request: HttpRequest | None, email: str, password: str, name: str = "") -> str:
    """Trade an e-mail and password for a new API token (the plaintext, once).

    Password attempts are limited per account (RATE_LIMIT_AUTH_ACCOUNT), on top of the per-client limit of the
    view: each attempt is counted before the password is checked (one atomic increment, so concurrent guesses
    cannot all pass) and a right password takes its count back. Once an account is over, every attempt is 429
    until the window ends, the right password included. E-mails without an account are counted the same way,
    so neither the answer nor the limit tells whether an account exists."""
    email = normalize_email(email)
    rate = settings.SUANLI_RATE_LIMITS["auth_account"]
    ident = _account_ident(email)
    allowed, wait = hit("auth_account", ident, rate)
    if not allowed:
        raise RateLimited("Too many failed sign-in attempts for this account; try again later.", wait=wait)
    user = authenticate(request, email=email, password=password)
    if user is None:
        raise Unauthenticated("Wrong email or password.")
    unhit("auth_account", ident, rate)
    return api_key_create(user=user, name=name or "token")[1]


def user_register(
    *, email: str, password: str, org_name: str, org_kind: str, currency: str = "USD"
) -> tuple[User, Organization, str]:
    """Create a user, their first organisation and an API token; all or nothing."""
    from allauth.account.models import EmailAddress

    email = email.strip().lower()
    try:
        validate_password(password, user=User(email=email))
    except ValidationError as exc:
        raise InvalidInput("The password is too weak.", fields={"password": exc.messages}) from None
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password)
            EmailAddress.objects.create(user=user, email=email, primary=True, verified=False)
            org = organization_create(user=user, name=org_name, kind=org_kind, currency=currency)
            token = api_key_create(user=user, name="registration")[1]
    except IntegrityError:
        raise InvalidInput(
            "An account with this email already exists.",
            fields={"email": ["This email is already registered."]},
        ) from None
    return user, org, token


def api_key_create(*, user: User, name: str = "") -> tuple[ApiKey, str]:
    """A new API key; the plaintext token is returned once and never stored."""
    token, prefix, key_hash = keys.new_key()
    key = ApiKey.objects.create(user=user, name=name[:100], prefix=prefix, key_hash=key_hash)
    return key, token


def api_key_revoke(*, user: User, key_id: int) -> ApiKey:
    """Revoke one of the user's keys (idempotent: revoking again keeps the first time)."""
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise NotFound("Unknown API key.")
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db()
    return key


def membership_add(*, org: Organization, actor: Membership, email: str, role: str) -> Membership:
    """Add an existing user to `org`. Owners and admins may add; only owners may add owners."""
    _check_can_grant(actor, role)
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise InvalidInput("No user has this email; ask them to sign up first.", fields={"email": ["Unknown user."]})
    try:
        with transaction.atomic():
            return Membership.objects.create(organization=org, user=user, role=role)
    except IntegrityError:
        raise Conflict("This user is already a member.", code="already_member") from None


def membership_update(*, membership: Membership, actor: Membership, role: str) -> Membership:
    _check_can_grant(actor, role)
    if membership.role == Role.OWNER and actor.role != Role.OWNER:
        raise NotAllowed("Only an owner can change an owner's role.")
    with transaction.atomic():
        _lock_owners(membership.organization_id)
        if membership.role == Role.OWNER and role != Role.OWNER:
            _require_another_owner(membership)
        Membership.objects.filter(pk=membership.pk).update(role=role)
    membership.refresh_from_db()
    return membership


def membership_remove(*, membership: Membership, actor: Membership) -> None:
    if actor.role not in (Role.OWNER, Role.ADMIN) and actor.pk != membership.pk:
        raise NotAllowed("Only owners and admins can remove members.")
    if membership.role == Role.OWNER and actor.role != Role.OWNER:
        raise NotAllowed("Only an owner can remove an owner.")
    with transaction.atomic():
        _lock_owners(membership.organization_id)
        if membership.role == Role.OWNER:
            _require_another_owner(membership)
        membership.delete()


def _check_can_grant(actor: Membership, role: str) -> None:
    if actor.role not in (Role.OWNER, Role.ADMIN):
        raise NotAllowed("Only owners and admins can manage members.")
    if role == Role.OWNER and actor.role != Role.OWNER:
        raise NotAllowed("Only an owner can make someone an owner.")


def _lock_owners(org_id: int) -> None:
    # Lock the organisation's owner rows in primary-key order so two demotions cannot both pass the check.
    list(Membership.objects.filter(organization_id=org_id, role=Role.OWNER).order_by("pk").select_for_update())


def _require_another_owner(membership: Membership) -> None:
    others = Membership.objects.filter(organization_id=membership.organization_id, role=Role.OWNER).exclude(
        pk=membership.pk
    )
    if not others.exists():
        raise Conflict("An organization needs at least one owner.", code="last_owner")


def organization_approve(*, org: Organization, staff: User) -> Organization:
    """Staff turn a pending provider active (idempotent for one already active via approval)."""
    if not staff.is_staff:
        raise NotAllowed("Only platform staff can approve providers.")
    updated = Organization.objects.filter(pk=org.pk, status=Organization.Status.PENDING).update(
        status=Organization.Status.ACTIVE, approved_at=timezone.now(), approved_by=staff
    )
    org.refresh_from_db()
    if not updated and org.approved_at is None:
        raise InvalidTransition(f"Only a pending organization can be approved; this one is {org.status}.")
    return org


def organization_suspend(*, org: Organization, staff: User) -> Organization:
    if not staff.is_staff:
        raise NotAllowed("Only platform staff can suspend organizations.")
    Organization.objects.filter(pk=org.pk).update(status=Organization.Status.SUSPENDED)
    org.refresh_from_db()
    return org
