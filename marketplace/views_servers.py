"""Provider pages for servers: the list with a register form, one server's cards and charts, drain.

Thin: reads through inventory.selectors and tenant-scoped querysets, writes through inventory.services. A
server of another organisation is answered 404 (the tenant-scoped queryset does not contain it); a customer
organisation has no server pages (403). Reading needs any membership of a provider organisation; changing
something needs one of the roles that may operate servers (accounts.permissions.OPERATE), like the API.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.validators import RegexValidator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from accounts.access import Actor
from accounts.error_text import error_text, place_errors
from accounts.errors import DomainError, InvalidInput, InvalidTransition, NotAllowed, NotFound
from accounts.formfields import AsciiIntegerField
from accounts.permissions import can_operate, provider_org, require_operate
from inventory import selectors, services
from inventory.access import access_server
from inventory.fleet import card_state, stale_before
from inventory.models import Gpu, Runtime, Server
from marketplace.card_memory import memory_gb
from marketplace.polling import poll_login_required
from marketplace.views_workloads import state_label
from workloads.selectors import host_of, server_workload_rows
from workloads.volumes import storage_taken

# A one-time enrolment token waits here (server-side session) between the POST that made it and the page
# that shows it once; reading it removes it.
TOKEN_SESSION_KEY = "suanli_enrollment_token"  # noqa: S105 (a session key, not a secret)
# The documented default of SITE_URL; while it is unchanged the command names the address the page was
# reached at instead, which is right for a development site reached by another name.
DEFAULT_SITE_URL = "http://127.0.0.1:8000"


# --- access ---------------------------------------------------------------------------------------------


def _server(request: HttpRequest, server_id: int) -> Server:
    """The caller's server `server_id`, cards prefetched (inventory.access); another tenant's id is a 404 page like
    an unknown one."""
    try:
        return access_server(Actor.of(request), server_id)
    except NotFound:
        raise Http404 from None


# --- card tiles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardTile:
    """What one tile shows for a card: its colour (`state`), a visible label and the latest sample."""

    index: int
    state: str  # healthy | degraded | failed | drained | nodata
    label: str
    reason: str
    utilization_pct: float | None = None
    memory_used_gb: float | None = None
    memory_total_gb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


TILE_LABELS = {
    "failed": gettext_lazy("Failed"),
    "degraded": gettext_lazy("Degraded"),
    "drained": gettext_lazy("Drained"),
    "nodata": gettext_lazy("No data"),
    "healthy": gettext_lazy("Healthy"),
}


def _tile_reason(gpu: Gpu, state: str) -> str:
    if state in ("failed", "degraded"):
        return gpu.health_reason
    if state == "drained":
        return gpu.drained_reason
    return _("No recent report from the agent.") if state == "nodata" else ""


def _card_tile(gpu: Gpu, *, fresh_after: datetime) -> CardTile:
    state = card_state(gpu, fresh_after=fresh_after)  # which state wins: inventory.fleet
    label, reason = str(TILE_LABELS[state]), _tile_reason(gpu, state)
    # The figures of a card that stopped reporting are old: show none rather than stale ones.
    sample = (gpu.last_sample or {}) if state != "nodata" else {}
    used_gb, total_gb = memory_gb(gpu, sample)
    return CardTile(
        index=gpu.index,
        state=state,
        label=label,
        reason=reason,
        utilization_pct=_number(sample.get("utilization_pct")),
        memory_used_gb=used_gb,
        memory_total_gb=total_gb,
        temperature_c=_number(sample.get("temperature_c")),
        power_w=_number(sample.get("power_w")),
    )


def card_tiles(server: Server, *, now: datetime | None = None) -> list[CardTile]:
    """One tile per card the agent registered, then grey ones up to the registered `gpu_count`."""
    fresh_after = stale_before(now)
    tiles = [_card_tile(gpu, fresh_after=fresh_after) for gpu in server.gpus.all()]
    taken = {tile.index for tile in tiles}
    missing = (i for i in range(64) if i not in taken)
    for _count in range(max(0, server.gpu_count - len(tiles))):
        tiles.append(CardTile(index=next(missing), state="nodata", label=_("No data"), reason=_("Not reported yet.")))
    return tiles


def _grid_context(server: Server) -> dict[str, Any]:
    samples = [gpu.last_sample_at for gpu in server.gpus.all() if gpu.last_sample_at]
    return {"server": server, "tiles": card_tiles(server), "latest_sample_at": max(samples, default=None)}


RUNTIME_CHOICES = [
    (Runtime.DOCKER, gettext_lazy("Containers (Docker): customers run images on the cards they rent")),
    (Runtime.HOST, gettext_lazy("Bare server: whole-server renters get SSH onto the host")),
]
STATUS_LABELS = {
    Server.Status.PENDING_ENROLLMENT: pgettext_lazy("server status", "Pending"),
    Server.Status.ONLINE: gettext_lazy("Online"),
    Server.Status.UNREACHABLE: gettext_lazy("Unreachable"),
    Server.Status.RETIRED: gettext_lazy("Retired"),
}


# --- the install command --------------------------------------------------------------------------------


def platform_url(request: HttpRequest) -> str:
    """The address the agent enrols with: SITE_URL, or this request's own when SITE_URL is left unset."""
    if settings.SITE_URL and settings.SITE_URL.rstrip("/") != DEFAULT_SITE_URL:
        return settings.SITE_URL.rstrip("/")
    return request.build_absolute_uri("/").rstrip("/")


def agent_install_command(*, url: str, token: str, force: bool = False) -> str:
    """agents/README.md's install steps as one line for the GPU host: the agent's wheel and its systemd unit come
    from this site (marketplace/views_agent.py; pip checks the wheel's SHA-256). Creating the user is skipped where
    it exists (a second try)."""
    from marketplace.views_agent import agent_wheel_url

    enroll = f"sudo suanli-agent enroll --url {shlex.quote(url)} --token {shlex.quote(token)}"
    if force:
        enroll += " --force"
    steps = [
        "sudo python3 -m venv /opt/suanli-agent",
        f"sudo /opt/suanli-agent/bin/pip install {shlex.quote(agent_wheel_url(url))}",
        "sudo ln -sf /opt/suanli-agent/bin/suanli-agent /usr/local/bin/suanli-agent",
        "(id -u suanli-agent >/dev/null 2>&1 || sudo useradd --system --no-create-home"
        " --shell /usr/sbin/nologin --groups video suanli-agent)",
        enroll,
        f"sudo curl -fsSL {shlex.quote(url + '/agent/suanli-agent.service')}"
        " -o /etc/systemd/system/suanli-agent.service",
        "sudo systemctl daemon-reload",
        "sudo systemctl enable --now suanli-agent",
    ]
    return " && ".join(steps)


def _keep_token_once(request: HttpRequest, server: Server, token: str) -> None:
    request.session[TOKEN_SESSION_KEY] = {"server": server.pk, "token": token}


def _take_token(request: HttpRequest, server: Server) -> str | None:
    kept = request.session.get(TOKEN_SESSION_KEY)
    if not isinstance(kept, dict) or kept.get("server") != server.pk:
        return None
    del request.session[TOKEN_SESSION_KEY]
    return str(kept.get("token") or "") or None


# --- the register form ----------------------------------------------------------------------------------


class ServerRegisterForm(forms.Form):
    """The fields of `server_register` a provider fills in; the same limits as the API's ServerInput."""

    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "gpu-node-01", "autocomplete": "off"}),
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9._ -]*$",
                gettext_lazy("Use letters, digits, spaces, '.', '_' and '-', starting with a letter or digit."),
            )
        ],
    )
    region = forms.CharField(
        label=gettext_lazy("Region"),
        max_length=50,
        widget=forms.TextInput(attrs={"placeholder": "cn-east-1"}),
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9-]*$", gettext_lazy("Use a region id such as cn-east-1."))],
    )
    gpu_model = forms.ModelChoiceField(
        label=gettext_lazy("GPU model"), queryset=selectors.gpu_models_listed(), empty_label=None
    )
    gpu_count = AsciiIntegerField(label=gettext_lazy("GPUs"), min_value=1, max_value=16, initial=8)
    cpu_cores = AsciiIntegerField(label=gettext_lazy("CPU cores"), min_value=1, max_value=4096)
    ram_gb = AsciiIntegerField(label=gettext_lazy("RAM (GB)"), min_value=1, max_value=65536)
    disk_gb = AsciiIntegerField(label=gettext_lazy("Disk (GB)"), min_value=1, max_value=10_000_000)
    # Disk lent for customers' volumes (workloads.volumes), priced by the offer; none unless filled in.
    volume_disk_gb = AsciiIntegerField(
        label=gettext_lazy("Disk for volumes (GB)"), min_value=0, max_value=10_000_000, initial=0, required=False
    )
    # The workload fields may be left out: the defaults are the model's (containers, ports 40000-40999).
    runtime = forms.ChoiceField(
        label=gettext_lazy("Runtime"), choices=RUNTIME_CHOICES, initial=Runtime.DOCKER, required=False
    )
    public_host = forms.CharField(
        label=gettext_lazy("Public host (optional)"),
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "gpu-node-01.example.com", "autocomplete": "off"}),
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$",
                gettext_lazy("Use a host name or an IP address."),
            )
        ],
    )
    port_range_start = AsciiIntegerField(
        label=gettext_lazy("First published port"), min_value=1024, max_value=65535, initial=40000, required=False
    )
    port_range_end = AsciiIntegerField(
        label=gettext_lazy("Last published port"), min_value=1024, max_value=65535, initial=40999, required=False
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for name in ("runtime", "port_range_start", "port_range_end", "volume_disk_gb"):
            if data.get(name) in (None, "") and name not in self.errors:
                data[name] = self.fields[name].initial
        start, end = data.get("port_range_start"), data.get("port_range_end")
        if start is not None and end is not None and end < start:
            self.add_error("port_range_end", _("Must not be below the first port."))
        lent, disk = data.get("volume_disk_gb"), data.get("disk_gb")
        if lent is not None and disk is not None and lent > disk:
            self.add_error("volume_disk_gb", _("Must not be above the disk."))
        return data

    def add_service_errors(self, exc: InvalidInput) -> None:
        """Put the service's field errors beside their fields (the rest above the form)."""
        place_errors(self, exc.fields, exc.message)

    def describe_errors(self) -> None:
        """Tie each field with an error to the text beside it, for screen readers."""
        for name in self.errors:
            if name in self.fields:
                self.fields[name].widget.attrs["aria-describedby"] = f"{self[name].auto_id}_errors"


def _chart_text() -> dict[str, str]:
    """The words telemetry_charts.js shows, in the page's language."""
    return {
        "card": _("GPU {index}"),
        "loading": _("Loading telemetry…"),
        "empty": _("No telemetry in this range yet."),
        "error": _("Could not load the telemetry. It is retried when you pick a range again."),
        "shown": _("Showing {range}, one point per {step} s."),
        # The legend's label for the x axis (uPlot's own default is an English "Time").
        "time": _("Time"),
    }


# --- pages ----------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def server_list(request: HttpRequest) -> HttpResponse:
    """The organisation's servers with a tile per card, and the form that registers one more."""
    org = provider_org(request)
    form = ServerRegisterForm()
    if request.method == "POST":
        require_operate(request)
        form = ServerRegisterForm(request.POST)
        if form.is_valid():
            try:
                server, token = services.server_register(org=org, **form.cleaned_data)
            except InvalidInput as exc:
                form.add_service_errors(exc)
            except NotAllowed:
                raise PermissionDenied from None
            else:
                _keep_token_once(request, server, token)
                messages.success(request, _("Server %(name)s is registered.") % {"name": server.name})
                return HttpResponseRedirect(reverse("marketplace:server_detail", args=[server.pk]))
    form.describe_errors()
    now = timezone.now()
    servers = [
        {
            "server": server,
            "status_label": STATUS_LABELS.get(server.status, server.status),
            "tiles": card_tiles(server, now=now),
        }
        for server in selectors.servers_for_org(org=org).order_by("name", "id")
    ]
    context = {"org": org, "servers": servers, "form": form, "can_operate": can_operate(request)}
    return render(request, "marketplace/servers/list.html", context, status=400 if form.errors else 200)


@login_required
def server_detail(request: HttpRequest, server_id: int) -> HttpResponse:
    """One server: hardware, enrolment, its cards (refreshed by htmx) and the telemetry charts."""
    return _detail(request, _server(request, server_id))


def _detail(request: HttpRequest, server: Server, *, volume_disk_error: str = "", status: int = 200) -> HttpResponse:
    token = _take_token(request, server)
    context = {
        **_grid_context(server),
        "org": request.org,
        "status_label": STATUS_LABELS.get(server.status, server.status),
        "can_operate": can_operate(request),
        "token": token,
        "install_command": (
            agent_install_command(url=platform_url(request), token=token, force=server.enrolled_at is not None)
            if token
            else None
        ),
        "telemetry_url": reverse("server-telemetry", args=[server.pk]),
        "chart_text": _chart_text(),
        "now": timezone.now(),
        "runtime_label": server.get_runtime_display(),
        "connect_host": host_of(server),
        # What runs here, without customer data (no image, environment, keys or ports).
        "workloads": [
            {"workload": workload, "label": state_label(workload.state)} for workload in server_workload_rows(server)
        ],
        "volume_disk_taken": storage_taken(server),
        "volume_disk_error": volume_disk_error,
    }
    response = render(request, "marketplace/servers/detail.html", context, status=status)
    if token:
        # The page carries a one-time secret: keep it out of every cache (and the back-forward cache).
        response["Cache-Control"] = "no-store"
    return response


@poll_login_required("marketplace:server_detail")
def server_tiles(request: HttpRequest, server_id: int) -> HttpResponse:
    """Just the grid of card tiles, for htmx to swap in every 15 seconds."""
    server = _server(request, server_id)
    return render(request, "marketplace/servers/_gpu_grid.html", _grid_context(server))


@require_POST
@login_required
def server_enrollment_token(request: HttpRequest, server_id: int) -> HttpResponse:
    """A fresh enrolment token (the previous one stops working), shown once on the server page."""
    server = _server(request, server_id)
    require_operate(request)
    try:
        server, token = services.server_enrollment_token_issue(server=server)
    except InvalidTransition as exc:
        messages.error(request, error_text(exc.message))
    else:
        _keep_token_once(request, server, token)
        messages.success(request, _("A new enrolment token is ready; the previous one no longer works."))
    return HttpResponseRedirect(reverse("marketplace:server_detail", args=[server.pk]))


@require_POST
@login_required
def server_volume_disk(request: HttpRequest, server_id: int) -> HttpResponse:
    """Change the disk the server lends for volumes (inventory.services.server_volume_disk_set): a number that is
    not one, above the disk or below what its volumes take is refused on the page (400, 409), said in its words."""
    server = _server(request, server_id)
    require_operate(request)
    raw = (request.POST.get("volume_disk_gb") or "").strip()
    wanted: Any = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else raw
    try:
        server = services.server_volume_disk_set(server=server, volume_disk_gb=wanted)
    except DomainError as exc:
        problems = (exc.fields or {}).get("volume_disk_gb") or [exc.message]
        return _detail(
            request, _server(request, server_id), volume_disk_error=error_text(problems[0]), status=exc.status_code
        )
    messages.success(
        request, _("%(name)s lends %(gb)s GB for volumes.") % {"name": server.name, "gb": server.volume_disk_gb}
    )
    return HttpResponseRedirect(reverse("marketplace:server_detail", args=[server.pk]))


@require_POST
@login_required
def server_drain(request: HttpRequest, server_id: int) -> HttpResponse:
    """Stop new leases on the server. Idempotent, so a second press changes nothing."""
    server = _server(request, server_id)
    require_operate(request)
    services.server_drain(server=server, reason=(request.POST.get("reason") or "").strip()[:200])
    messages.success(request, _("%(name)s is drained: no new leases start on it.") % {"name": server.name})
    return HttpResponseRedirect(reverse("marketplace:server_detail", args=[server.pk]))


@require_POST
@login_required
def server_undrain(request: HttpRequest, server_id: int) -> HttpResponse:
    """Accept new leases on the server again. Idempotent."""
    server = _server(request, server_id)
    require_operate(request)
    services.server_undrain(server=server)
    messages.success(request, _("%(name)s accepts new leases again.") % {"name": server.name})
    return HttpResponseRedirect(reverse("marketplace:server_detail", args=[server.pk]))
