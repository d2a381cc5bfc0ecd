"""Template context: the funds banner that every page of a customer organisation carries while its balance runs
low (an open `low` notice) or for a week after its card-hour leases were stopped for want of money."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils import timezone


def funds_banner(request: HttpRequest) -> dict:
    """`funds_notice` for a signed-in member of a customer organisation that has one to show: one indexed query,
    none for anyone else."""
    user = getattr(request, "user", None)
    org = getattr(request, "org", None)
    if not (user and user.is_authenticated) or org is None or not org.is_customer:
        return {}
    from billing.selectors import funds_notice_shown

    return {"funds_notice": funds_notice_shown(org=org, now=timezone.now())}
