"""The main flows in a real browser: a customer rents and ends a lease, a provider registers a server and lists
it, staff open their pages, and the site speaks Chinese. Screenshots of the main pages are saved on the way."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.urls import Resolver404, resolve
from django.utils import timezone

from billing.models import Payout, ProviderStatement
from inventory.models import Server
from scheduler.models import Lease
from tests.browser.conftest import DESKTOP, PHONE, fits_the_screen, screenshot
from tests.factories import GpuFactory, GpuModelFactory, ServerFactory, online_server

pytestmark = pytest.mark.django_db(transaction=True)


def _exists(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _no_page_errors(page) -> None:
    assert page.errors == [], page.errors


# --- (a) a customer ---------------------------------------------------------------------------------------


def _fresh_cards(server: Server) -> None:
    now = timezone.now()
    for gpu in server.gpus.all():
        gpu.last_sample = {"utilization_pct": 35.0, "memory_used_mb": 20480, "temperature_c": 55.0, "power_w": 300.0}
        gpu.last_sample_at = now
        gpu.save(update_fields=["last_sample", "last_sample_at"])
    Server.objects.filter(pk=server.pk).update(last_seen_at=now)


def test_a_customer_finds_an_offer_rents_two_cards_watches_them_and_ends_the_lease(open_as, alice, bob):
    assert _exists("/offers/") and _exists("/leases/1/"), "the storefront pages (/offers/, /leases/<id>/) are gone"
    model = GpuModelFactory(name="Browser H100")
    server = online_server(organization=bob.org, gpus=8, gpu_model=model, name="bob-h100-01")
    _fresh_cards(server)
    page = open_as(alice.user)

    page.goto("/")
    screenshot(page, "home")
    page.goto("/offers/")
    offer = server.offers.get()
    link = page.locator(f'a[href$="/offers/{offer.pk}/"]').first
    link.wait_for()
    screenshot(page, "offers")
    link.click()
    page.wait_for_url(re.compile(rf"/offers/{offer.pk}/"))
    form = page.locator("#rent-form")
    form.wait_for()
    count = form.get_by_label(re.compile(r"cards|GPUs", re.IGNORECASE)).first
    count.fill("2")
    screenshot(page, "offer")
    form.locator('button[type="submit"]').first.click()
    page.wait_for_url(re.compile(r"/leases/\d+/"))
    lease = Lease.objects.get(organization=alice.org)
    assert lease.gpu_count == 2 and lease.allocations.count() == 2

    cards = page.locator("#lease-cards")
    cards.wait_for()
    assert cards.get_by_text(re.compile(r"GPU|card", re.IGNORECASE)).count() >= 2
    page.locator("canvas").first.wait_for()
    screenshot(page, "lease")

    page.on("dialog", lambda dialog: dialog.accept())  # an "are you sure?" of the page, if it asks
    end = page.locator("#end-lease")
    confirm = page.locator("form:has(#end-lease) input[type=checkbox]")
    if confirm.count():
        confirm.first.check()
    end.click()
    page.wait_for_url(re.compile(rf"/leases/{lease.pk}/"))
    page.locator("#lease-state", has_text=re.compile(r"ended", re.IGNORECASE)).wait_for()
    lease.refresh_from_db()
    assert lease.state == "ended"
    _no_page_errors(page)


def test_a_customer_adds_a_key_rents_a_template_and_copies_the_ssh_line(open_as, alice, bob):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from workloads.agent_channel import reported_states_apply
    from workloads.models import Template

    # The public catalogue is a data migration, which an earlier transactional test's flush may have emptied.
    Template.objects.get_or_create(
        organization=None,
        slug="pytorch-jupyter",
        defaults={"name": "PyTorch 2.5 + JupyterLab", "image": "pytorch/pytorch:2.5.1", "ports": [22, 8888]},
    )
    server = online_server(organization=bob.org, gpus=8, name="bob-wl-01", public_host="gpu1.bob.example.com")
    offer = server.offers.get()
    public_key = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    page = open_as(alice.user)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"/offers/{offer.pk}/")
    page.get_by_role("link", name="Add an SSH key").click()
    page.get_by_label("Public key").fill(f"{public_key} alice@laptop")
    page.get_by_role("button", name="Add key").click()
    page.wait_for_url(re.compile(rf"/offers/{offer.pk}/$"))

    form = page.locator("#rent-form")
    assert form.get_by_label(re.compile("alice@laptop")).is_checked()
    form.get_by_label(re.compile(r"PyTorch 2\.5 \+ JupyterLab")).check()
    screenshot(page, "offer-workload")
    form.locator("#rent-submit").click()
    page.wait_for_url(re.compile(r"/leases/\d+/"))
    panel = page.locator("#lease-workloads")
    panel.get_by_text("Waiting for the server").wait_for()

    # The server's agent reports it running: the panel, polling while it starts, shows how to connect.
    lease = Lease.objects.get(organization=alice.org)
    workload = lease.workloads.get()
    entry = {"id": workload.pk, "state": "running", "ports": {"22": 40022, "8888": 40888}}
    reported_states_apply(server=workload.server, report={"workloads": [entry]})
    ssh = panel.locator("code.ssh-command")
    ssh.wait_for()
    assert ssh.inner_text() == "ssh -p 40022 root@gpu1.bob.example.com"
    panel.locator('a[href^="http://gpu1.bob.example.com:40888/lab?token="]').wait_for()
    panel.get_by_role("button", name="Copy").click()
    panel.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == "ssh -p 40022 root@gpu1.bob.example.com"
    screenshot(page, "lease-workload")

    page.on("dialog", lambda dialog: dialog.accept())
    panel.get_by_role("button", name="Stop").click()
    page.wait_for_url(re.compile(rf"/leases/{lease.pk}/"))
    page.locator("#lease-workloads").get_by_text("stop asked for").wait_for()
    workload.refresh_from_db()
    assert workload.desired == "stopped"
    _no_page_errors(page)


# --- (b) a provider ---------------------------------------------------------------------------------------


def test_a_provider_registers_a_server_sees_the_enrolment_command_and_lists_it(open_as, bob):
    GpuModelFactory(name="Browser H100")
    page = open_as(bob.user)
    page.goto("/servers/")
    form = page.locator('form[action="/servers/"]')
    form.get_by_label("Name").fill("gpu-node-42")
    form.get_by_label("Region").fill("cn-east-1")
    form.get_by_label("GPU model").select_option(label="Browser H100")
    form.get_by_label("GPUs").fill("4")
    form.get_by_label("CPU cores").fill("64")
    form.get_by_label("RAM (GB)").fill("512")
    form.get_by_label("Disk (GB)").fill("4000")
    form.get_by_role("button", name="Register server").click()
    page.wait_for_url(re.compile(r"/servers/\d+/$"))

    command = page.get_by_label("Agent install command")
    assert re.search(r"sudo suanli-agent enroll --url \S+ --token enr_[A-Za-z0-9_-]+", command.input_value())
    server = Server.objects.get(organization=bob.org, name="gpu-node-42")
    assert server.status == Server.Status.PENDING_ENROLLMENT and server.enrollment_token_hash
    screenshot(page, "server-registered")

    # The server list, with a few enrolled cards beside the new one.
    enrolled = ServerFactory(organization=bob.org, name="gpu-node-01", gpu_count=4, status="online")
    now = timezone.now()
    for index, (health, util) in enumerate([("healthy", 92.0), ("healthy", 40.0), ("degraded", 10.0), ("failed", 0)]):
        GpuFactory(
            server=enrolled,
            index=index,
            health=health,
            health_reason="XID 79" if health == "failed" else "",
            last_sample={"utilization_pct": util, "memory_used_mb": 30000, "temperature_c": 60, "power_w": 400},
            last_sample_at=now,
        )
    page.goto("/servers/")
    page.get_by_role("link", name="gpu-node-42").wait_for()
    screenshot(page, "servers")

    # List the new server with a price per card-hour.
    page.goto("/provider/offers/")
    page.locator("#new-offer").click()
    page.wait_for_url("**/provider/offers/new/")
    offer_form = page.locator("#offer-form")
    offer_form.get_by_label("Server", exact=True).select_option(str(server.pk))
    offer_form.get_by_label("On-demand, per card-hour").fill("2.40")
    offer_form.get_by_label("Interruptible, per card-hour").fill("1.10")
    screenshot(page, "provider-offer-form")
    offer_form.get_by_role("button", name="List the server").click()
    page.wait_for_url("**/provider/offers/")
    page.get_by_text("gpu-node-42 is listed.").wait_for()
    assert server.offers.get().card_hour_price == Decimal("2.40")
    screenshot(page, "provider-offers")

    # A second press of a sent form lists nothing twice: the page disables its buttons once sent.
    page.goto("/provider/offers/new/")
    second = page.locator("#offer-form")
    second.get_by_label("On-demand, per card-hour").fill("3")
    second.get_by_label("Server", exact=True).select_option(str(enrolled.pk))
    button = second.get_by_role("button", name="List the server")
    button.dblclick()
    page.wait_for_url("**/provider/offers/")
    assert enrolled.offers.count() == 1

    ProviderStatement.objects.create(
        organization=bob.org,
        period="2026-03",
        currency="USD",
        gross=Decimal("18432.00"),
        take_rate=Decimal("0.15"),
        commission=Decimal("2764.80"),
        credits=Decimal("120.00"),
        net=Decimal("15547.20"),
    )
    paid = ProviderStatement.objects.create(
        organization=bob.org,
        period="2026-02",
        currency="USD",
        gross=Decimal("9000.00"),
        take_rate=Decimal("0.15"),
        commission=Decimal("1350.00"),
        net=Decimal("7650.00"),
    )
    Payout.objects.create(
        statement=paid,
        organization=bob.org,
        method="bank",
        amount=paid.net,
        currency="USD",
        state="paid",
        reference="CMB-2026-0311",
        paid_at=datetime(2026, 3, 11, tzinfo=UTC),
    )
    page.goto("/provider/earnings/")
    page.get_by_text("15547.20 USD").wait_for()
    screenshot(page, "earnings")
    _no_page_errors(page)


def test_provider_pages_fit_a_phone(open_as, bob):
    server = online_server(organization=bob.org, gpus=8, name="bob-phone-01")
    _fresh_cards(server)
    page = open_as(bob.user, viewport=PHONE)
    for path, name in [("/provider/offers/", "provider-offers"), ("/provider/offers/new/", "provider-offer-form")]:
        page.goto(path)
        assert fits_the_screen(page), f"{path} scrolls sideways on a phone"
        screenshot(page, f"{name}-phone")
    page.goto("/provider/earnings/")
    assert fits_the_screen(page)
    # The menu folds away on a phone and opens with its button.
    menu = page.get_by_role("button", name="Menu")
    menu.click()
    page.locator("#site-menu").get_by_role("link", name="Your offers").wait_for()
    _no_page_errors(page)


# --- (c) staff --------------------------------------------------------------------------------------------


def test_staff_open_the_fleet_catalogue_close_period_and_reconciliation_pages(open_as, staff, bob):
    server = online_server(organization=bob.org, gpus=8, name="bob-fleet-01")
    _fresh_cards(server)
    broken = server.gpus.get(index=3)
    broken.health, broken.health_reason = "failed", "XID 79: GPU has fallen off the bus"
    broken.health_changed_at = timezone.now()
    broken.save(update_fields=["health", "health_reason", "health_changed_at"])
    page = open_as(staff.user)

    page.goto("/staff/fleet/")
    page.get_by_text("XID 79: GPU has fallen off the bus").wait_for()
    assert page.locator('[data-count="failed"]').inner_text() == "1"
    screenshot(page, "staff-fleet")
    page.set_viewport_size(PHONE)
    assert fits_the_screen(page), "the fleet page scrolls sideways on a phone"
    screenshot(page, "staff-fleet-phone")
    page.set_viewport_size(DESKTOP)
    page.goto("/staff/catalogue/")
    page.locator("#gpu-catalogue").wait_for()
    screenshot(page, "staff-catalogue")
    page.goto("/staff/close-period/")
    page.get_by_label("Month (YYYY-MM)").fill("2099-01")
    page.get_by_role("button", name="Close the month").click()
    page.get_by_text("2099-01 is not over yet").wait_for()
    screenshot(page, "staff-close-period")
    _no_page_errors(page)

    assert _exists("/staff/reconciliation/"), "the staff reconciliation page (/staff/reconciliation/) is gone"
    response = page.goto("/staff/reconciliation/")
    assert response is not None and response.status == 200
    page.locator("main h1").wait_for()
    screenshot(page, "staff-reconciliation")
    _no_page_errors(page)


# --- (d) Chinese ------------------------------------------------------------------------------------------


def test_the_site_speaks_chinese_from_the_browser_and_the_switcher_changes_it(open_as, bob):
    page = open_as(bob.user, locale="zh-CN")
    page.goto("/provider/offers/")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    page.get_by_role("heading", name="我的报价").wait_for()
    page.get_by_role("link", name="收益").first.wait_for()
    screenshot(page, "provider-offers-zh-hans")
    page.goto("/")
    screenshot(page, "home-zh-hans")

    # The switcher in the menu: English from now on, whatever the browser asks for.
    page.get_by_label("语言").select_option("en")
    page.wait_for_load_state()
    page.get_by_role("link", name="Your offers").first.wait_for()
    assert page.locator("html").get_attribute("lang") == "en"
    page.goto("/provider/earnings/")
    page.get_by_role("heading", name="Earnings", exact=True).wait_for()
    _no_page_errors(page)
