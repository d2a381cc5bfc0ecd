"""The one e-mail verification rule, for the web sign-up and the API's alike.

The rule: until its e-mail address is verified, an account signed up by itself (the sign-up page or
`POST /api/v1/auth/register/`) can do nothing. The web sign-in waits for the link (allauth, with
`ACCOUNT_EMAIL_VERIFICATION = "mandatory"`), and the API answers its API tokens with 403 `email_unverified`
(`accounts/authentication.py`) and gives it no new token (`POST /api/v1/auth/token/`); the token registration
handed out starts working once the link is followed. A new link: `POST /api/v1/auth/verification/` (the
e-mail), or the sign-in page; a link's key can also be confirmed through the API
(`POST /api/v1/auth/verification/confirm/`). In development the mail is printed on the console.

The setting decides for both: with `ACCOUNT_EMAIL_VERIFICATION` "optional" or "none" nobody waits. Accounts that
did not sign up themselves (made by staff in the admin, `createsuperuser`) have no address on file and are not held.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from accounts.errors import NotAllowed

UNVERIFIED_MESSAGE = (
    "Verify your e-mail address first: follow the link we sent to it (POST /api/v1/auth/verification/ sends a new "
    "one). Until then this account can do nothing."
)


class EmailUnverified(NotAllowed):
    code = "email_unverified"


def verification_required() -> bool:
    return settings.ACCOUNT_EMAIL_VERIFICATION == "mandatory"


def email_verified(user: Any) -> bool:
    """Whether `user` may act: verified, or an account with no address on file (not signed up by itself), or the
    rule is off."""
    from allauth.account.models import EmailAddress

    if not verification_required():
        return True
    addresses = EmailAddress.objects.filter(user_id=user.pk)
    return addresses.filter(verified=True).exists() or not addresses.exists()


def require_verified(user: Any) -> None:
    """Raise 403 `email_unverified` for an account that must verify its e-mail first."""
    if not email_verified(user):
        raise EmailUnverified(UNVERIFIED_MESSAGE)


def send_verification(*, request: Any, email: str) -> bool:
    """Mail a new verification link to `email` when it is an unverified address on file; say nothing about which
    (the caller answers the same either way). Returns whether a mail went out."""
    from allauth.account.models import EmailAddress

    address = EmailAddress.objects.filter(email__iexact=email.strip(), verified=False).select_related("user").first()
    if address is None or EmailAddress.objects.filter(user_id=address.user_id, verified=True).exists():
        return False
    from allauth.core.context import request_context

    with request_context(request):  # allauth's mail reads the request from its context (unset after a request)
        address.send_confirmation(request, signup=False)
    return True


def confirm_key(*, request: Any, key: str) -> bool:
    """Confirm the address of a verification link's key (the part after /accounts/confirm-email/). Returns whether
    the key was good."""
    from allauth.account.models import get_emailconfirmation_model

    confirmation = get_emailconfirmation_model().from_key(key.strip())
    if confirmation is None:
        return False
    return confirmation.confirm(request) is not None
