"""Writes for users, organisations, memberships and API keys."""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts import keys
from accounts.access import is_platform_staff
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
from accounts.tenancy import platform_work
from accounts.throttling import hit, unhit
from accounts.two_factor import MfaRequired, require_second_factor
from accounts.verification import require_verified

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "the organisation was reached through the caller's membership or the staff policy"

logger = logging.getLogger(__name__)


def _initial_status(kind: str) -> str:
    return Organization.Status.PENDING if kind != Organization.Kind.CUSTOMER else Organization.Status.ACTIVE


@platform_work(_PLATFORM)
def organization_create(*, user: User, name: str, kind: str, currency: str = "USD") -> Organization:
    """A new organisation with `user` as its owner. Providers start `pending` until staff approve them.
    No limits: the API and the pages go through `organization_request`."""
    with transaction.atomic():
        org = Organization.objects.create(name=name.strip(), kind=kind, status=_initial_status(kind), currency=currency)
        Membership.objects.create(organization=org, user=user, role=Role.OWNER)
    return org


@platform_work(_PLATFORM)
def organization_request(*, user: User, name: str, kind: str, currency: str = "USD") -> Organization:
    """A user asks for a new organisation (API or page). At most RATE_LIMIT_ORG_CREATE per user (429), and at
    most SUANLI_MAX_PENDING_ORGANIZATIONS of the user's own organisations waiting for approval at once (409): a
    user cannot flood the staff's approval queue. Locks the user's row, so two requests at once cannot both
    pass the pending count."""
    rate = settings.SUANLI_RATE_LIMITS["org_create"]
    allowed, wait = hit("org_create", str(user.pk), rate)
    if not allowed:
        raise RateLimited("You have created too many organisations lately; try again later.", wait=wait)
    cap = settings.SUANLI_MAX_PENDING_ORGANIZATIONS
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        if _initial_status(kind) == Organization.Status.PENDING:
            pending = user.memberships.filter(role=Role.OWNER, organization__status=Organization.Status.PENDING).count()
            if pending >= cap:
                raise Conflict(
                    f"You already have {pending} organisations waiting for approval (at most {cap}); "
                    "wait until staff have reviewed them.",
                    code="too_many_pending",
                )
        return organization_create(user=user, name=name, kind=kind, currency=currency)


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _account_ident(email: str) -> str:
    # The cache key names no e-mail address.
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]


def api_token_issue(*, request: HttpRequest | None, email: str, password: str, name: str = "", code: str = "") -> str:
    """Trade an e-mail and password (and, for an account with two-factor authentication, a `code` of its
    authenticator or a recovery code: accounts/two_factor.py) for a new API token (the plaintext, once).

    Password attempts are limited per account (RATE_LIMIT_AUTH_ACCOUNT), on top of the per-client limit of the
    view: each attempt is counted before the password is checked (one atomic increment, so concurrent guesses
    cannot all pass) and a right password takes its count back. Once an account is over, every attempt is 429
    until the window ends, the right password included. E-mails without an account are counted the same way,
    so neither the answer nor the limit tells whether an account exists. The right password of an account with
    two-factor authentication and no code takes its count back and answers 401 `mfa_required`; a wrong code
    keeps its count (the same limit as a wrong password) and answers 401 `mfa_code_invalid`. An account whose
    e-mail is not verified yet gets no token: 403 `email_unverified` (accounts/verification.py)."""
    email = normalize_email(email)
    rate = settings.SUANLI_RATE_LIMITS["auth_account"]
    ident = _account_ident(email)
    allowed, wait = hit("auth_account", ident, rate)
    if not allowed:
        raise RateLimited("Too many failed sign-in attempts for this account; try again later.", wait=wait)
    user = authenticate(request, email=email, password=password)
    if user is None:
        raise Unauthenticated("Wrong email or password.")
    try:  # a wrong code (MfaCodeInvalid) keeps its count, like a wrong password
        require_second_factor(request=request, user=user, code=code)
    except MfaRequired:
        unhit("auth_account", ident, rate)  # the first of the two steps, not a guess
        raise
    unhit("auth_account", ident, rate)
    require_verified(user)  # the right password, but the account waits for its e-mail (accounts/verification.py)
    return api_key_create(user=user, name=name or "token")[1]


def _email_taken(email: str) -> bool:
    from allauth.account.models import EmailAddress

    return (
        User.objects.filter(email__iexact=email).exists() or EmailAddress.objects.filter(email__iexact=email).exists()
    )


def user_register(
    *, email: str, password: str, org_name: str, org_kind: str, currency: str = "USD"
) -> tuple[User, Organization, str]:
    """Create a user, their first organisation and an API token; all or nothing.

    An e-mail that already has an account gets the same answer, so registering does not tell who has an account
    (what allauth's ACCOUNT_PREVENT_ENUMERATION does for the sign-up page): unsaved stand-ins whose ids come from
    the same sequences as real ones, a token that was never stored, and a mail to the address's owner that
    someone tried to register with it. The password is hashed on both paths, so the time taken tells little."""
    from allauth.account.models import EmailAddress

    email = normalize_email(email)
    try:
        validate_password(password, user=User(email=email))
    except ValidationError as exc:
        raise InvalidInput("The password is too weak.", fields={"password": exc.messages}) from None
    if not _email_taken(email):
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=email, password=password)
                EmailAddress.objects.create(user=user, email=email, primary=True, verified=False)
                org = organization_create(user=user, name=org_name, kind=org_kind, currency=currency)
                token = api_key_create(user=user, name="registration")[1]
        except IntegrityError:
            if not _email_taken(email):  # not the e-mail (a key prefix collision): a real error
                raise
        else:
            return user, org, token
    return _registration_of_taken_email(
        email=email, password=password, org_name=org_name, org_kind=org_kind, currency=currency
    )


def _registration_of_taken_email(
    *, email: str, password: str, org_name: str, org_kind: str, currency: str
) -> tuple[User, Organization, str]:
    make_password(password)  # the work a real registration does, so the answer takes as long
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')), nextval(pg_get_serial_sequence(%s, 'id'))",
            [User._meta.db_table, Organization._meta.db_table],
        )
        user_id, org_id = cursor.fetchone()
    user = User(pk=user_id, email=email)
    org = Organization(
        pk=org_id,
        name=org_name.strip(),
        kind=org_kind,
        status=_initial_status(org_kind),
        currency=currency,
        created_at=timezone.now(),
    )
    token = keys.new_key()[0]

    def notify() -> None:
        from accounts.tasks import send_registration_attempt_mail

        try:
            send_registration_attempt_mail.delay(email)
        except Exception:  # the broker is down: the answer must not differ, the owner just gets no mail
            logger.exception("could not queue the registration-attempt mail")

    transaction.on_commit(notify)
    return user, org, token


def registration_attempt_notify(*, email: str) -> None:
    """Tell the owner of `email` that someone tried to register an account with it (allauth's
    account-already-exists mail, with a link to reset the password)."""
    site = settings.SITE_URL.rstrip("/")
    context = {
        "email": email,
        "current_site": {"name": "Suanli", "domain": urlsplit(site).netloc or site},
        "password_reset_url": site + reverse("account_reset_password"),
        "signup_url": site + reverse("account_signup"),
    }
    prefix = "account/email/account_already_exists"
    subject = " ".join(render_to_string(f"{prefix}_subject.txt", context).splitlines()).strip()
    body = render_to_string(f"{prefix}_message.txt", context)
    send_mail(f"[Suanli] {subject}", body, settings.DEFAULT_FROM_EMAIL, [email])


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


@platform_work(_PLATFORM)
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


@platform_work(_PLATFORM)
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


@platform_work(_PLATFORM)
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


@platform_work(_PLATFORM)
def organization_approve(*, org: Organization, staff: User) -> Organization:
    """Staff turn a pending provider active (idempotent for one already active via approval)."""
    if not is_platform_staff(staff):
        raise NotAllowed("Only platform staff can approve providers.")
    updated = Organization.objects.filter(pk=org.pk, status=Organization.Status.PENDING).update(
        status=Organization.Status.ACTIVE, approved_at=timezone.now(), approved_by=staff
    )
    org.refresh_from_db()
    if not updated and org.approved_at is None:
        raise InvalidTransition(f"Only a pending organization can be approved; this one is {org.status}.")
    return org


@platform_work(_PLATFORM)
def organization_suspend(*, org: Organization, staff: User) -> Organization:
    if not is_platform_staff(staff):
        raise NotAllowed("Only platform staff can suspend organizations.")
    Organization.objects.filter(pk=org.pk).update(status=Organization.Status.SUSPENDED)
    org.refresh_from_db()
    return org
