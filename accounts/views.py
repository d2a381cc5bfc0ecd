"""Page actions (HTML forms) for organisations and API keys, thin callers of accounts.services, and the
organisation's log (a page any member reads).

Each action is a POST that redirects back (to a safe `next`, or the dashboard) with a message; a foreign or
unknown id answers 404 exactly like a missing one.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from accounts import org_log, services
from accounts.access import Actor, access_organization, is_platform_staff
from accounts.context import SESSION_KEY, membership_for
from accounts.errors import DomainError, NotFound
from accounts.models import Organization


def _back(request: HttpRequest) -> HttpResponseRedirect:
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = settings.LOGIN_REDIRECT_URL
    return HttpResponseRedirect(target)


@require_POST
@login_required
def organization_switch(request: HttpRequest) -> HttpResponse:
    """Act for another of the caller's organisations from now on (kept in the session)."""
    try:
        membership = membership_for(request.user, request.POST.get("organization"))
    except NotFound:
        raise Http404 from None
    if membership is None:
        raise Http404
    request.session[SESSION_KEY] = membership.organization_id
    messages.success(request, _("You are now acting for %(name)s.") % {"name": membership.organization.name})
    return _back(request)


class OrganizationForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=200)
    kind = forms.ChoiceField(label=gettext_lazy("Kind"), choices=Organization.Kind.choices)
    currency = forms.ChoiceField(label=gettext_lazy("Currency"), choices=Organization.Currency.choices)


@require_POST
@login_required
def organization_new(request: HttpRequest) -> HttpResponse:
    """A new organisation owned by the caller. Providers wait for staff approval.

    A user who acted for no organisation acts for the new one; anyone else keeps acting for the one they had (the
    page they were on stays theirs) and is told how to switch: a new organisation never switches silently."""
    form = OrganizationForm(request.POST)
    if not form.is_valid() or not form.cleaned_data["name"].strip():
        messages.error(request, _("Give the organisation a name, a kind and a currency."))
        return _back(request)
    try:
        org = services.organization_request(
            user=request.user,
            name=form.cleaned_data["name"],
            kind=form.cleaned_data["kind"],
            currency=form.cleaned_data["currency"],
        )
    except DomainError as exc:
        messages.error(request, exc.message)
        return _back(request)
    current = getattr(request, "org", None)
    if current is None:
        request.session[SESSION_KEY] = org.pk
        messages.success(request, _("Organisation %(name)s created.") % {"name": org.name})
    else:
        messages.success(
            request,
            _(
                "Organisation %(name)s created. You still act for %(current)s: choose %(name)s in the organisation "
                "menu at the top of the page to act for it."
            )
            % {"name": org.name, "current": current.name},
        )
    return _back(request)


@require_POST
@login_required
def organization_approve_page(request: HttpRequest, org_id: int) -> HttpResponse:
    """Staff approve a pending provider. To anyone else the address does not exist."""
    if not is_platform_staff(request.user):
        raise Http404
    try:
        org = access_organization(Actor.of(request, staff_action=True), org_id)
    except NotFound:
        raise Http404 from None
    try:
        services.organization_approve(org=org, staff=request.user)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("%(name)s is approved and active.") % {"name": org.name})
    return _back(request)


@require_POST
@login_required
def api_key_new(request: HttpRequest) -> HttpResponse:
    """A new API key for the caller; the token is shown once (as a message) and never again."""
    name = (request.POST.get("name") or "").strip()[:100]
    _key, token = services.api_key_create(user=request.user, name=name)
    messages.success(request, token, extra_tags="api-token")
    return _back(request)


@require_POST
@login_required
def api_key_revoke_page(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        key = services.api_key_revoke(user=request.user, key_id=key_id)
    except NotFound:
        raise Http404 from None
    messages.success(request, _("API key %(prefix)s… is revoked.") % {"prefix": key.prefix})
    return _back(request)


LOG_PAGE_SIZE = 50


@login_required
@require_GET
def organization_log(request: HttpRequest) -> HttpResponse:
    """The organisation's log, newest first, 50 a page (accounts.org_log), in the page's language."""
    org = getattr(request, "org", None)
    page = Paginator(org_log.events_of(org), LOG_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {"event": event, "message": org_log.message(event), "actor": org_log.actor_text(event)}
        for event in page.object_list
    ]
    return render(request, "accounts/org_log.html", {"org": org, "page": page, "rows": rows})
