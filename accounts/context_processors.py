"""Template context: the organisation the page acts for and the user's other memberships (the switcher); for
visitors, whether a new account waits for its e-mail to be verified (accounts/verification.py)."""

from django.http import HttpRequest


def organization(request: HttpRequest) -> dict:
    from accounts.verification import verification_required

    user = getattr(request, "user", None)
    if not (user and user.is_authenticated):
        return {"email_verification_required": verification_required()}  # the sign-up page says the rule
    from accounts.selectors import memberships_for_user

    return {
        "current_membership": getattr(request, "membership", None),
        "my_memberships": memberships_for_user(user=user),
    }
