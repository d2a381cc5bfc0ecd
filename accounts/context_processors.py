"""Template context: the organisation the page acts for and the user's other memberships (the switcher)."""

from django.http import HttpRequest


def organization(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    if not (user and user.is_authenticated):
        return {}
    from accounts.selectors import memberships_for_user

    return {
        "current_membership": getattr(request, "membership", None),
        "my_memberships": memberships_for_user(user=user),
    }
