"""The second factor of `POST /api/v1/auth/token/`: an account that set up two-factor authentication on the web
(allauth.mfa: TOTP, recovery codes) gets no API token for its password alone.

The code is checked by allauth.mfa's own authenticators, so the web's rules hold for the API too: a TOTP code is
good once within its window (allauth marks it used in the shared cache, so a code the web took is refused here
and the other way round), a recovery code once ever, and failures count toward allauth's per-account limit of
the web's two-factor step as well as the token's per-account limit (accounts/services.api_token_issue). API keys
already issued are not touched: they are the second factor's result, not a password.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from accounts.errors import RateLimited, Unauthenticated

MFA_REQUIRED_MESSAGE = (
    "This account has two-factor authentication: send the code of its authenticator app (or a recovery code) as "
    '"code" with the e-mail and password.'
)


class MfaRequired(Unauthenticated):
    code = "mfa_required"


class MfaCodeInvalid(Unauthenticated):
    code = "mfa_code_invalid"


def mfa_enabled(user: Any) -> bool:
    """Whether `user` has an authenticator that guards its sign-in (allauth's own rule)."""
    from allauth.mfa.utils import is_mfa_enabled

    return is_mfa_enabled(user)


def require_second_factor(*, request: HttpRequest | None, user: Any, code: str) -> None:
    """Pass when `user` has no two-factor authentication, or `code` is a good code of one of its authenticators
    (TOTP or recovery code; a good code is used up). Otherwise 401 `mfa_required` (no code) or `mfa_code_invalid`,
    or 429 once allauth's per-account limit of wrong codes is reached. Mirrors allauth's own authenticate form
    (allauth.mfa.base.forms.BaseAuthenticateForm) without a session."""
    if not mfa_enabled(user):
        return
    code = (code or "").strip()
    if not code:
        raise MfaRequired(MFA_REQUIRED_MESSAGE)
    from allauth.core.context import request_context
    from allauth.mfa import signals
    from allauth.mfa.base.internal.flows import check_rate_limit
    from allauth.mfa.models import Authenticator
    from django.core.exceptions import ValidationError

    with request_context(request):  # allauth's rate limit reads the request from its context
        try:
            clear_limit = check_rate_limit(user) if request is not None else (lambda: None)
        except ValidationError:
            raise RateLimited("Too many wrong two-factor codes for this account; try again later.", wait=300) from None
        main = None
        for authenticator in Authenticator.objects.filter(user=user).exclude(type=Authenticator.Type.WEBAUTHN):
            if main is None or authenticator.type == Authenticator.Type.TOTP:
                main = authenticator
            if authenticator.wrap().validate_code(code):
                clear_limit()
                authenticator.record_usage()
                signals.authenticator_used.send(
                    sender=Authenticator,
                    request=request,
                    user=user,
                    authenticator=authenticator,
                    reauthenticated=False,
                    passwordless=False,
                )
                return
        if main is not None:
            signals.authentication_failed.send(
                sender=Authenticator, request=request, user=user, authenticator=main, reauthentication=False
            )
    raise MfaCodeInvalid("The two-factor code is wrong, expired or already used.")
