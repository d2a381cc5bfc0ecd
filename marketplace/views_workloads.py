"""Customer pages for workloads: the account's SSH keys, and a lease's workload panel (its state on each server,
how to connect, Restart and Stop), with the words the lease and server pages use for workload states and events.

Thin: keys are read through workloads.access (another user's key is 404) and changed through workloads.services;
a lease is reached through scheduler.access.access_lease and its workload through workloads.access.access_workload
(another tenant's lease or workload is 404 like an unknown one); how to connect comes from
workloads.selectors.connections. Restart and Stop need a role that may operate, once per rendered form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import pgettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.access import Actor
from accounts.error_text import error_text
from accounts.errors import InvalidInput, NotFound
from accounts.permissions import can_operate, require_operate
from marketplace.forms import describe_errors
from marketplace.forms_workloads import SshKeyForm, WorkloadActionForm
from marketplace.polling import poll_login_required
from scheduler.access import access_lease
from scheduler.models import Lease, LeaseEvent, LeaseState
from workloads import access, selectors, services
from workloads.models import Access, Workload, WorkloadSpec, WorkloadState
from workloads.selectors import Connection

# The pages' own words for a workload's state (the model's labels serve the admin and the API's schema).
WORKLOAD_STATE_LABELS = {
    WorkloadState.PENDING: pgettext_lazy("workload state", "Waiting for the server"),
    WorkloadState.PULLING: pgettext_lazy("workload state", "Pulling the image"),
    WorkloadState.STARTING: pgettext_lazy("workload state", "Starting"),
    WorkloadState.RUNNING: pgettext_lazy("workload state", "Running"),
    WorkloadState.EXITED: pgettext_lazy("workload state", "Exited"),
    WorkloadState.FAILED: pgettext_lazy("workload state", "Failed"),
    WorkloadState.STOPPING: pgettext_lazy("workload state", "Stopping"),
    WorkloadState.CLEANED: pgettext_lazy("workload state", "Removed"),
}
# States the agent moves on from by itself: the panel asks again every few seconds while one is shown.
PASSING_STATES = frozenset(
    {WorkloadState.PENDING, WorkloadState.PULLING, WorkloadState.STARTING, WorkloadState.STOPPING}
)
POLL_SECONDS = 5


def state_label(state: str) -> str:
    return str(WORKLOAD_STATE_LABELS.get(state, state))


# --- events of a lease ------------------------------------------------------------------------------------


def workload_event_text(event: LeaseEvent) -> str:
    """What a `failed` or `workload` event of a lease's log says, in the page's language."""
    data = event.data or {}
    if event.kind == LeaseEvent.Kind.FAILED:
        return _("The workload did not start: %(reason)s. The cards are released and nothing is charged.") % {
            "reason": data.get("reason") or _("no reason given")
        }
    action = data.get("action")
    if action == "restart":
        return _("Restart asked for.")
    if action == "stop":
        return _("Stop asked for.")
    text = _("Server %(server)s: %(state)s.") % {
        "server": data.get("server", "—"),
        "state": state_label(str(data.get("state", ""))),
    }
    if data.get("state") == WorkloadState.EXITED and data.get("exit_code") is not None:
        text += " " + _("Exit code %(code)s.") % {"code": data["exit_code"]}
    if data.get("message"):
        text += " " + str(data["message"])
    return text


# --- the lease page's panel -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionRow:
    connection: Connection
    label: str


def _connection_label(connection: Connection) -> str:
    if connection.kind == "ssh":
        return _("SSH")
    if connection.container_port == services.NOTEBOOK_PORT:
        return _("Notebook (JupyterLab)")
    if connection.kind == "http":
        return _("Web, port %(port)s") % {"port": connection.container_port}
    return _("Port %(port)s") % {"port": connection.container_port}


@dataclass(frozen=True)
class WorkloadRow:
    """One server's workload as the panel shows it."""

    workload: Workload
    label: str
    since: datetime
    connections: list[ConnectionRow]
    passing: bool
    stop_asked: bool


def _row(workload: Workload, spec: WorkloadSpec) -> WorkloadRow:
    return WorkloadRow(
        workload=workload,
        label=state_label(workload.state),
        since=workload.state_changed_at or workload.created_at,
        connections=[ConnectionRow(c, _connection_label(c)) for c in selectors.connections(workload, spec)],
        passing=workload.state in PASSING_STATES,
        stop_asked=workload.desired == Workload.Desired.STOPPED
        and workload.state not in (WorkloadState.EXITED, WorkloadState.FAILED, WorkloadState.CLEANED),
    )


def workload_panel(request: HttpRequest, lease: Lease) -> dict[str, Any] | None:
    """The lease's workload: what it runs, and each server's workload with how to connect; None without one."""
    spec = selectors.spec_of(lease)
    if spec is None:
        return None
    rows = [_row(workload, spec) for workload in selectors.workloads_of_lease(lease)]
    active = lease.state == LeaseState.ACTIVE
    return {
        "spec": spec,
        "host_access": spec.access == Access.HOST,
        "key_names": [key.get("name") or key.get("fingerprint", "") for key in spec.ssh_keys],
        "rows": rows,
        # Ask again while a workload is on its way somewhere (or a stop is not carried out yet).
        "poll": active and (not rows or any(row.passing or row.stop_asked for row in rows)),
        "poll_seconds": POLL_SECONDS,
        "can_act": active and can_operate(request),
        "action_form": WorkloadActionForm(),
    }


# --- pages ------------------------------------------------------------------------------------------------


def lease_for_page(request: HttpRequest, lease_id: int) -> Lease:
    """The organisation's lease, or a 404 page (another tenant's lease is unknown)."""
    try:
        return access_lease(Actor.of(request), lease_id)
    except NotFound:
        raise Http404 from None


def _panel_response(request: HttpRequest, lease: Lease, *, status: int = 200) -> HttpResponse:
    context = {"lease": lease, "panel": workload_panel(request, lease)}
    return render(request, "marketplace/leases/_workloads.html", context, status=status)


@require_GET
@poll_login_required("marketplace:lease_detail")
def lease_workloads(request: HttpRequest, lease_id: int) -> HttpResponse:
    """The workload panel alone, for htmx to swap in while a workload is pulling, starting or stopping."""
    return _panel_response(request, lease_for_page(request, lease_id))


def _workload_action(request: HttpRequest, lease_id: int, workload_id: int, verb: str) -> HttpResponse:
    lease = lease_for_page(request, lease_id)
    try:
        workload = access.access_workload(lease, workload_id)
    except NotFound:
        raise Http404 from None
    require_operate(request)
    form = WorkloadActionForm(request.POST)
    form.is_valid()
    act = services.workload_restart if verb == "restart" else services.workload_stop
    outcome = form.submit(
        org=request.org,
        scope=f"web.workload.{workload.pk}.{verb}",
        payload={"lease": lease.pk, "workload": workload.pk},
        work=lambda: {"workload": act(workload=workload).pk},
    )
    if outcome.ok and verb == "restart":
        messages.success(request, _("The workload on server %(server)s restarts.") % {"server": workload.server_id})
    elif outcome.ok:
        messages.success(
            request,
            _("The workload on server %(server)s stops. The lease and its cards go on (and are charged).")
            % {"server": workload.server_id},
        )
    else:
        messages.error(request, error_text(outcome.message))
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]) + "#workloads-title")


@require_POST
@login_required
def workload_restart(request: HttpRequest, lease_id: int, workload_id: int) -> HttpResponse:
    """Start the workload again with the same image, keys and ports."""
    return _workload_action(request, lease_id, workload_id, "restart")


@require_POST
@login_required
def workload_stop(request: HttpRequest, lease_id: int, workload_id: int) -> HttpResponse:
    """Stop the workload; the lease holds its cards until it ends."""
    return _workload_action(request, lease_id, workload_id, "stop")


# --- SSH keys ---------------------------------------------------------------------------------------------


def _next_url(request: HttpRequest) -> str:
    """Where to go after adding a key: back to the page that sent here (the rent form), else the keys page."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure()):
        return wanted
    return reverse("marketplace:ssh_keys")


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def ssh_keys(request: HttpRequest) -> HttpResponse:
    """The signed-in user's SSH public keys, and the form that adds one."""
    form = SshKeyForm()
    if request.method == "POST":
        form = SshKeyForm(request.POST)
        if form.is_valid():
            try:
                key = services.ssh_key_add(user=request.user, **form.cleaned_data)
            except InvalidInput as exc:
                form.add_service_errors(exc)
            else:
                messages.success(
                    request,
                    _("Key %(name)s is added (%(fingerprint)s).") % {"name": key.name, "fingerprint": key.fingerprint},
                )
                return HttpResponseRedirect(_next_url(request))
    describe_errors(form)
    context = {
        "keys": access.ssh_keys_of(request.user),
        "form": form,
        "next": request.POST.get("next") or request.GET.get("next") or "",
    }
    return render(request, "marketplace/ssh_keys.html", context, status=400 if form.errors else 200)


@require_POST
@login_required
def ssh_key_delete(request: HttpRequest, key_id: int) -> HttpResponse:
    """Remove one of the user's keys (another user's key is 404). Leases made with it keep it until they end."""
    try:
        key = access.access_ssh_key(Actor.of(request), key_id)
    except NotFound:
        raise Http404 from None
    services.ssh_key_delete(key=key)
    messages.success(
        request, _("Key %(name)s is removed. Leases that already have it keep it until they end.") % {"name": key.name}
    )
    return HttpResponseRedirect(reverse("marketplace:ssh_keys"))
