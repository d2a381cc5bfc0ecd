"""The data-access part of the volumes page (issue 16): per server, the organisation's volumes a no-GPU session may
open (ready or in grace, mounted by no live lease and by no open session) with the caller's SSH keys and the price
per hour; its sessions with their state, SSH command and end; and the two POSTs that open and end one.

Thin: sessions are read through workloads.data_access and opened or ended through its services, so the page refuses
what the API refuses (in the same words, translated by accounts.error_text). Any member reads; opening and ending
need a role that may operate in a customer organisation, like the API (403 otherwise).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import pgettext_lazy
from django.views.decorators.http import require_POST

from accounts.access import Actor, access_one, visible
from accounts.error_text import error_text
from accounts.errors import DomainError, InvalidInput, NotFound
from billing.display import money
from inventory.access import STOREFRONT
from inventory.models import Server
from workloads import data_access, volumes
from workloads.access import ssh_keys_of
from workloads.models import DataAccess

SESSION_STATES = {
    "pending": pgettext_lazy("data access state", "Waiting for the server"),
    "pulling": pgettext_lazy("data access state", "Preparing"),
    "starting": pgettext_lazy("data access state", "Starting"),
    "running": pgettext_lazy("data access state", "Running"),
    "exited": pgettext_lazy("data access state", "Stopped"),
    "failed": pgettext_lazy("data access state", "Failed"),
    "stopping": pgettext_lazy("data access state", "Ending"),
    "cleaned": pgettext_lazy("data access state", "Ended"),
    "ended": pgettext_lazy("data access state", "Ended"),
}
SHOWN_ENDED = 5  # ended sessions listed under the open ones


def _openable(org) -> dict[int, list]:
    """Server id -> the organisation's volumes there that a session may open now."""
    by_server: dict[int, list] = defaultdict(list)
    for volume in volumes.volumes_of(org).filter(state__in=data_access.OPENABLE).order_by("name"):
        if not volume.mounted and not volumes.in_data_access(volume):
            by_server[volume.server_id].append(volume)
    return by_server


def data_access_context(request: HttpRequest, *, can_change: bool) -> dict[str, Any]:
    """What the volumes page shows of data access: `access_servers` (each server's openable volumes and price per
    hour, when the caller may open one) and `access_sessions` (open ones, then the last few ended)."""
    org = getattr(request, "org", None)
    servers = []
    if can_change and org is not None:
        keys = list(ssh_keys_of(request.user))
        for server_id, openable in sorted(_openable(org).items()):
            server = Server.objects.unscoped(STOREFRONT).get(pk=server_id)
            try:
                price, currency = data_access.price_of(server, org)
            except InvalidInput:
                continue  # no live offer lending storage there now: nothing can be opened on it
            servers.append({"server": server, "volumes": openable, "price": money(price, currency), "keys": keys})
    sessions = list(data_access.sessions_of(org).filter(state=DataAccess.State.OPEN))
    sessions += list(data_access.sessions_of(org).filter(state=DataAccess.State.ENDED)[:SHOWN_ENDED])
    rows = []
    for session in sessions:
        state = data_access.shown_state(session)
        rows.append(
            {
                "session": session,
                "state": state,
                "state_text": str(SESSION_STATES.get(state, state)),
                "connect": data_access.connect(session),
                "price": money(session.price_per_hour, session.currency),
                "volumes": sorted(v.name for v in session.volumes.all()),
                "open": session.state == DataAccess.State.OPEN,
            }
        )
    hours = settings.SUANLI_DATA_ACCESS_MAX_HOURS
    return {"access_servers": servers, "access_sessions": rows, "access_max_hours": hours}


def _ids(values: list[str]) -> list[Any]:
    return [int(v) if v.isascii() and v.isdigit() and len(v) < 19 else v for v in values]


@require_POST
@login_required
def data_access_open(request: HttpRequest) -> HttpResponse:
    """Open a session on a server for the volumes and keys ticked; a refusal is said above the page."""
    from marketplace.views_volumes import may_change

    if not may_change(request):
        raise PermissionDenied
    org = request.org
    try:
        server = access_one(Server.objects.unscoped(STOREFRONT).all(), request.POST.get("server"), "server")
        session = data_access.data_access_open(
            org=org,
            user=request.user,
            server=server,
            volumes=_ids(request.POST.getlist("volumes")),
            ssh_keys=_ids(request.POST.getlist("ssh_keys")),
        )
    except NotFound:
        messages.error(request, _("Unknown server."))
        return HttpResponseRedirect(reverse("marketplace:volume_list"), status=303)
    except DomainError as exc:
        fields = getattr(exc, "fields", None) or {}
        if fields.get("ssh_keys"):
            messages.error(request, _("Choose at least one of your SSH keys."))
        elif fields.get("volumes") and not request.POST.getlist("volumes"):
            messages.error(request, _("Choose at least one volume."))
        else:
            messages.error(request, error_text(exc.message))
        return HttpResponseRedirect(reverse("marketplace:volume_list"), status=303)
    messages.success(
        request,
        _("Data access %(id)s is opening on server %(server)s: its SSH command appears here once it runs.")
        % {"id": session.pk, "server": session.server_id},
    )
    return HttpResponseRedirect(reverse("marketplace:volume_list") + "#data-access", status=303)


@require_POST
@login_required
def data_access_end(request: HttpRequest, session_id: int) -> HttpResponse:
    """End a session (idempotent)."""
    from marketplace.views_volumes import may_change

    try:
        actor = Actor.for_org(getattr(request, "org", None))
        session = access_one(visible(DataAccess.objects.all(), actor), session_id, "session")
    except NotFound:
        raise Http404 from None
    if not may_change(request):
        raise PermissionDenied
    data_access.data_access_end(session=session)
    messages.success(request, _("Data access %(id)s is ended; it is no longer charged.") % {"id": session.pk})
    return HttpResponseRedirect(reverse("marketplace:volume_list") + "#data-access", status=303)
