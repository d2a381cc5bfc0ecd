"""The host agent as the site serves it, to anyone (it holds no secret): `/agent/` says what to install (JSON: the
wheel's name, version, address and SHA-256, and the install line), `/agent/<wheel>` is the wheel of `agents/`
built from this checkout (inventory/agent_package.py), `/agent/suanli-agent.whl` redirects to it (pip needs the
versioned file name, browsers and curl do not), and `/agent/suanli-agent.service` is the systemd unit."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.views.decorators.http import require_GET

from inventory.agent_package import current
from marketplace.views_servers import platform_url

SERVICE_FILE = "deploy/suanli-agent.service"


def agent_wheel_url(base: str) -> str:
    """The wheel's address under the site's `base` URL, pinned to its SHA-256 (pip checks it)."""
    wheel = current()
    return f"{base.rstrip('/')}/agent/{wheel.filename}#sha256={wheel.sha256}"


@require_GET
def agent_index(request: HttpRequest) -> JsonResponse:
    wheel = current()
    base = platform_url(request)
    return JsonResponse(
        {
            "name": "suanli-agent",
            "version": wheel.version,
            "filename": wheel.filename,
            "url": f"{base}/agent/{wheel.filename}",
            "sha256": wheel.sha256,
            "service_url": f"{base}/agent/suanli-agent.service",
            "install": f"pip install '{agent_wheel_url(base)}'",
            "enroll": f"suanli-agent enroll --url {base} --token <TOKEN>",
        }
    )


@require_GET
def agent_wheel(request: HttpRequest) -> HttpResponse:
    wheel = current()
    response = HttpResponse(wheel.content, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{wheel.filename}"'
    response["ETag"] = f'"{wheel.sha256}"'
    response["X-Checksum-SHA256"] = wheel.sha256
    response["Cache-Control"] = "public, max-age=300"
    return response


@require_GET
def agent_wheel_latest(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(f"/agent/{current().filename}")


@require_GET
def agent_service(request: HttpRequest) -> HttpResponse:
    unit = (settings.BASE_DIR / SERVICE_FILE).read_text(encoding="utf-8")
    response = HttpResponse(unit, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "public, max-age=300"
    return response
