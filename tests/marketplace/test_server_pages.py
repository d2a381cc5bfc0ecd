"""Provider server pages: the list and register form, one server's cards, drain, enrolment tokens, charts."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from accounts.models import Role
from inventory.agent_package import current
from inventory.models import Gpu, GpuModel, Server
from inventory.services import enrollment_token_hash
from tests.factories import GpuFactory, GpuModelFactory, MembershipFactory, ServerFactory

TOKEN_RE = re.compile(r"--token (enr_[A-Za-z0-9_-]+)")


def _sample(**overrides) -> dict:
    return {"utilization_pct": 87.0, "memory_used_mb": 40960, "temperature_c": 64.0, "power_w": 512.0, **overrides}


def _server_with_cards(org, name="bob-node-01", **kwargs) -> Server:
    server = ServerFactory(organization=org, name=name, status=Server.Status.ONLINE, **kwargs)
    now = timezone.now()
    for index in range(server.gpu_count):
        GpuFactory(server=server, index=index, last_sample=_sample(), last_sample_at=now)
    server.last_seen_at = now
    server.save(update_fields=["last_seen_at"])
    return server


def _register_data(gpu_model: GpuModel, **overrides) -> dict:
    return {
        "name": "gpu-node-07",
        "region": "cn-east-1",
        "gpu_model": gpu_model.pk,
        "gpu_count": 8,
        "cpu_cores": 128,
        "ram_gb": 2048,
        "disk_gb": 30000,
        **overrides,
    }


# --- who may see what -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/servers/", "/servers/1/", "/servers/1/cards/"])
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_poll_after_the_session_ended_sends_the_whole_page_to_login(client, bob):
    server = _server_with_cards(bob.org)
    response = client.get(f"/servers/{server.pk}/cards/", HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")
    assert f"/servers/{server.pk}/" in response["HX-Redirect"].replace("%2F", "/")


def test_the_list_shows_bobs_servers_and_not_charlies(client, bob, charlie):
    _server_with_cards(bob.org, "bob-node-01")
    ServerFactory(organization=bob.org, name="bob-node-02")
    _server_with_cards(charlie.org, "charlie-node-01")
    client.force_login(bob.user)
    response = client.get("/servers/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "bob-node-01" in body
    assert "bob-node-02" in body
    assert "cn-east-1" in body
    assert "charlie-node-01" not in body


def test_a_customer_organisation_has_no_server_pages_and_no_servers_link(client, alice, bob):
    client.force_login(alice.user)
    assert client.get("/servers/").status_code == 403
    assert 'href="/servers/"' not in client.get("/dashboard/").content.decode()
    client.force_login(bob.user)
    assert 'href="/servers/"' in client.get("/dashboard/").content.decode()


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("get", "cards/"),
        ("post", "drain/"),
        ("post", "undrain/"),
        ("post", "enrollment-token/"),
    ],
)
def test_another_tenants_server_is_not_found_on_every_page(client, bob, charlie, method, suffix):
    foreign = _server_with_cards(charlie.org, "charlie-node-01")
    before = (foreign.drained, foreign.enrollment_token_hash)
    client.force_login(bob.user)
    response = getattr(client, method)(f"/servers/{foreign.pk}/{suffix}")
    assert response.status_code == 404
    assert "charlie-node-01" not in response.content.decode()
    foreign.refresh_from_db()
    assert (foreign.drained, foreign.enrollment_token_hash) == before


def test_a_customer_cannot_open_a_providers_server_either(client, alice, bob):
    server = _server_with_cards(bob.org)
    client.force_login(alice.user)
    assert client.get(f"/servers/{server.pk}/").status_code == 404


# --- tiles ----------------------------------------------------------------------------------------------


def test_tiles_show_each_cards_health_by_colour_and_by_text(client, bob):
    server = _server_with_cards(bob.org)
    Gpu.objects.filter(server=server, index=3).update(health="failed", health_reason="XID 79: fell off the bus")
    Gpu.objects.filter(server=server, index=5).update(health="degraded", health_reason="thermal throttling")
    client.force_login(bob.user)

    listing = client.get("/servers/").content.decode()
    assert listing.count("gpu-tile-compact gpu-healthy") == 6 + 1  # six cards and the legend
    assert "gpu-tile-compact gpu-failed" in listing
    assert "GPU 3: Failed" in listing
    assert "XID 79: fell off the bus" in listing
    assert "87%" in listing

    detail = client.get(f"/servers/{server.pk}/").content.decode()
    tiles = re.findall(r'<li class="gpu-tile gpu-(\w+)"', detail)
    assert tiles == ["healthy", "healthy", "healthy", "failed", "healthy", "degraded", "healthy", "healthy"]
    assert '<p class="gpu-reason">XID 79: fell off the bus</p>' in detail  # visible, not only a tooltip
    assert 'title="Failed — XID 79: fell off the bus"' in detail
    assert "64 °C" in detail
    assert "40.0 / 80 GB" in detail


def test_a_drained_card_and_a_silent_card_are_grey(client, bob):
    server = _server_with_cards(bob.org)
    Gpu.objects.filter(server=server, index=0).update(drained=True, drained_reason="manual")
    Gpu.objects.filter(server=server, index=1).update(last_sample_at=timezone.now() - timezone.timedelta(hours=1))
    client.force_login(bob.user)
    detail = client.get(f"/servers/{server.pk}/").content.decode()
    tiles = re.findall(r'<li class="gpu-tile gpu-(\w+)"', detail)
    assert tiles[:3] == ["drained", "nodata", "healthy"]
    assert "No data" in detail


def test_a_server_waiting_for_its_agent_shows_a_grey_tile_per_registered_card(client, bob):
    ServerFactory(organization=bob.org, name="fresh-node", gpu_count=4)
    client.force_login(bob.user)
    listing = client.get("/servers/").content.decode()
    assert listing.count("gpu-tile-compact gpu-nodata") == 4 + 1  # four cards and the legend
    assert "Pending" in listing
    assert "never" in listing


def test_the_cards_partial_is_just_the_grid_and_keeps_polling(client, bob):
    server = _server_with_cards(bob.org)
    Gpu.objects.filter(server=server, index=2).update(health="failed", health_reason="double-bit ECC")
    client.force_login(bob.user)
    response = client.get(f"/servers/{server.pk}/cards/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert body.strip().startswith('<div id="gpu-grid"')
    assert 'hx-trigger="every 15s"' in body
    assert f'hx-get="/servers/{server.pk}/cards/"' in body
    assert "gpu-failed" in body
    assert "double-bit ECC" in body


# --- registering a server -------------------------------------------------------------------------------


def test_registering_a_server_shows_its_install_command_with_the_token_once(client, bob):
    gpu_model = GpuModelFactory()
    client.force_login(bob.user)
    response = client.post("/servers/", _register_data(gpu_model), follow=True)
    assert response.status_code == 200
    server = Server.objects.get(organization=bob.org, name="gpu-node-07")
    assert server.status == Server.Status.PENDING_ENROLLMENT
    assert response.redirect_chain[-1][0] == f"/servers/{server.pk}/"
    body = response.content.decode()
    match = TOKEN_RE.search(body)
    assert match, "the install command with the token is on the page"
    assert enrollment_token_hash(match.group(1)) == server.enrollment_token_hash
    # agents/README.md's steps, in order, with this site's address: the wheel and the unit come from the site.
    command = response.context["install_command"]
    wheel = current()
    steps = [
        "sudo python3 -m venv /opt/suanli-agent",
        f"/opt/suanli-agent/bin/pip install 'http://testserver/agent/{wheel.filename}#sha256={wheel.sha256}'",
        "ln -sf /opt/suanli-agent/bin/suanli-agent /usr/local/bin/suanli-agent",
        "useradd --system --no-create-home --shell /usr/sbin/nologin --groups video suanli-agent",
        f"sudo suanli-agent enroll --url http://testserver --token {match.group(1)}",
        "curl -fsSL http://testserver/agent/suanli-agent.service -o /etc/systemd/system/suanli-agent.service",
        "systemctl daemon-reload",
        "systemctl enable --now suanli-agent",
    ]
    positions = [command.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "\n" not in command
    assert 'data-copy-target="install-command"' in body
    assert response["Cache-Control"] == "no-store"

    again = client.get(f"/servers/{server.pk}/").content.decode()
    assert match.group(1) not in again
    assert "--token" not in again


def test_the_install_command_names_site_url_when_it_is_set(client, bob, settings):
    settings.SITE_URL = "https://gpu.example.com/"
    client.force_login(bob.user)
    response = client.post("/servers/", _register_data(GpuModelFactory()), follow=True)
    assert "enroll --url https://gpu.example.com --token enr_" in response.context["install_command"]


def test_a_bad_register_form_shows_field_errors_and_creates_nothing(client, bob):
    gpu_model = GpuModelFactory()
    client.force_login(bob.user)
    response = client.post(
        "/servers/", _register_data(gpu_model, name="", region="CN East!", gpu_count=99, disk_gb="lots")
    )
    assert response.status_code == 400
    assert not Server.objects.filter(organization=bob.org).exists()
    body = response.content.decode()
    for field in ("name", "region", "gpu_count", "disk_gb"):
        assert f'id="id_{field}_errors"' in body
        assert re.search(rf'<(input|select)[^>]*aria-invalid="true"[^>]*id="id_{field}"', body) or re.search(
            rf'<(input|select)[^>]*id="id_{field}"[^>]*aria-invalid="true"', body
        )
    assert "Use a region id such as cn-east-1." in body
    assert "--token" not in body
    assert 'value="CN East!"' in body  # what was typed stays in the form


def test_a_name_already_used_is_reported_beside_the_name_field(client, bob):
    gpu_model = GpuModelFactory()
    ServerFactory(organization=bob.org, name="gpu-node-07", gpu_model=gpu_model)
    client.force_login(bob.user)
    response = client.post("/servers/", _register_data(gpu_model))
    assert response.status_code == 400
    assert Server.objects.filter(organization=bob.org).count() == 1
    errors = re.search(r'id="id_name_errors"[^>]*>([^<]*)<', response.content.decode())
    assert errors and "already exists" in errors.group(1)


def test_an_inactive_gpu_model_is_not_offered(client, bob):
    retired = GpuModelFactory(name="Old Card", active=False)
    client.force_login(bob.user)
    assert "Old Card" not in client.get("/servers/").content.decode()
    response = client.post("/servers/", _register_data(retired))
    assert response.status_code == 400
    assert not Server.objects.filter(organization=bob.org).exists()


def test_a_billing_member_may_look_but_not_register_or_drain(client, bob):
    server = _server_with_cards(bob.org)
    billing = MembershipFactory(organization=bob.org, role=Role.BILLING)
    client.force_login(billing.user)
    listing = client.get("/servers/")
    assert listing.status_code == 200
    assert "Register a server" not in listing.content.decode()
    assert client.post("/servers/", _register_data(GpuModelFactory())).status_code == 403
    assert client.post(f"/servers/{server.pk}/drain/").status_code == 403
    server.refresh_from_db()
    assert not server.drained


# --- one server -----------------------------------------------------------------------------------------


def test_drain_and_undrain_from_the_page(client, bob):
    server = _server_with_cards(bob.org)
    client.force_login(bob.user)
    page = client.get(f"/servers/{server.pk}/").content.decode()
    assert f'action="/servers/{server.pk}/drain/"' in page

    response = client.post(f"/servers/{server.pk}/drain/", {"reason": "maintenance"}, follow=True)
    server.refresh_from_db()
    assert server.drained and server.drained_reason == "maintenance"
    body = response.content.decode()
    assert "maintenance" in body
    assert f'action="/servers/{server.pk}/undrain/"' in body

    # A second press (double submit) changes nothing: the first time and reason stay.
    drained_at = server.drained_at
    client.post(f"/servers/{server.pk}/drain/", {"reason": "other"})
    server.refresh_from_db()
    assert (server.drained_reason, server.drained_at) == ("maintenance", drained_at)

    client.post(f"/servers/{server.pk}/undrain/")
    server.refresh_from_db()
    assert not server.drained
    assert client.post(f"/servers/{server.pk}/undrain/").status_code == 302  # again: still fine


def test_drain_needs_a_post_with_a_csrf_token(bob):
    from django.test import Client

    server = _server_with_cards(bob.org)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(bob.user)
    assert strict.get(f"/servers/{server.pk}/drain/").status_code == 405
    assert strict.post(f"/servers/{server.pk}/drain/").status_code == 403
    server.refresh_from_db()
    assert not server.drained


def test_a_pending_server_offers_a_fresh_enrolment_token_shown_once(client, bob):
    client.force_login(bob.user)
    client.post("/servers/", _register_data(GpuModelFactory()))
    server = Server.objects.get(organization=bob.org)
    first_hash = server.enrollment_token_hash
    page = client.get(f"/servers/{server.pk}/").content.decode()
    assert f'action="/servers/{server.pk}/enrollment-token/"' in page

    response = client.post(f"/servers/{server.pk}/enrollment-token/", follow=True)
    server.refresh_from_db()
    token = TOKEN_RE.search(response.content.decode()).group(1)
    assert server.enrollment_token_hash == enrollment_token_hash(token) != first_hash
    assert token not in client.get(f"/servers/{server.pk}/").content.decode()


def test_the_server_page_shows_hardware_and_a_hardware_flag(client, bob):
    server = _server_with_cards(bob.org, hardware_flag="agent reports 7 cards, registered 8")
    client.force_login(bob.user)
    body = client.get(f"/servers/{server.pk}/").content.decode()
    assert "agent reports 7 cards, registered 8" in body
    assert "128" in body and "2048 GB" in body
    assert server.gpu_model.name in body


def test_the_page_loads_the_vendored_chart_library_and_nothing_from_elsewhere(client, bob):
    server = _server_with_cards(bob.org)
    client.force_login(bob.user)
    body = client.get(f"/servers/{server.pk}/").content.decode()
    assert '<script defer src="/static/vendor/uplot/uPlot.iife.min.js"></script>' in body
    assert '<script defer src="/static/js/telemetry_charts.js"></script>' in body
    assert 'href="/static/vendor/uplot/uPlot.min.css"' in body
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", body)
    assert not re.search(r"<link[^>]+href=[\"']?(https?:)?//", body)
    assert f'data-telemetry-url="/api/v1/servers/{server.pk}/telemetry/"' in body
    assert f'data-org="{bob.org.pk}"' in body
    for range_seconds in (3600, 21600, 86400, 604800):
        assert f'data-range="{range_seconds}"' in body


def test_the_vendored_files_exist_in_static(settings):
    from pathlib import Path

    vendor = Path(settings.BASE_DIR) / "static" / "vendor" / "uplot"
    assert (vendor / "uPlot.iife.min.js").stat().st_size > 10_000
    assert (vendor / "uPlot.min.css").exists()
    assert "uplot@" in (vendor.parent / "VERSIONS").read_text()


def test_the_charts_telemetry_request_works_with_the_session_and_the_org_header(client, bob, charlie):
    server = _server_with_cards(bob.org)
    foreign = _server_with_cards(charlie.org, "charlie-node-01")
    client.force_login(bob.user)
    response = client.get(
        f"/api/v1/servers/{server.pk}/telemetry/",
        {"since": "2025-01-01T00:00:00Z", "until": "2025-01-01T06:00:00Z"},
        HTTP_X_ORGANIZATION=str(bob.org.pk),
    )
    assert response.status_code == 200
    assert [gpu["index"] for gpu in response.json()["gpus"]] == list(range(8))
    foreign_response = client.get(f"/api/v1/servers/{foreign.pk}/telemetry/", HTTP_X_ORGANIZATION=str(bob.org.pk))
    assert foreign_response.status_code == 404


# --- language -------------------------------------------------------------------------------------------


def test_the_server_pages_speak_chinese(client, bob):
    server = _server_with_cards(bob.org)
    Gpu.objects.filter(server=server, index=0).update(health="failed")
    client.force_login(bob.user)
    listing = client.get("/servers/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in ("登记服务器", "最后在线", "故障", "在线"):
        assert words in listing
    detail = client.get(f"/servers/{server.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in ("遥测", "温度", "停止接单", "1 小时", "7 天"):
        assert words in detail
    invalid = client.post("/servers/", {"name": ""}, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "这个字段是必填项" in invalid or "必填" in invalid
