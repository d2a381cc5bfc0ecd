"""The lease page's Stop and Start: buttons for whoever may operate, the stopped state and its events, once per
rendered form, no free cards said on the page, and the same in Chinese."""

from __future__ import annotations

import re

import pytest
from django.conf import settings

from accounts.models import Role
from scheduler.models import Allocation, Lease
from scheduler.services import lease_create, lease_end, lease_stop
from tests.factories import GpuModelFactory, MembershipFactory, online_server


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="stop-page-h100", name="Stop Page H100")
    return online_server(organization=bob.org, gpu_model=model, gpus=2, name="bob-stop-box").offers.get()


@pytest.fixture
def lease(alice, offer) -> Lease:
    return lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer)


def key_of(body: str, form: str) -> str:
    part = body[body.index(f'id="{form}"') :]
    return re.search(r'name="idempotency_key" value="([^"]+)"', part).group(1)


def test_the_owner_stops_and_starts_the_lease_from_its_page(client, alice, lease):
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="stop-lease"' in body and 'id="start-lease"' not in body
    key = key_of(body, "stop-form")
    stopped = client.post(f"/leases/{lease.pk}/stop/", {"idempotency_key": key}, follow=True)
    assert stopped.status_code == 200
    page = stopped.content.decode()
    assert f"Lease {lease.pk} is stopped" in page and 'id="lease-stopped"' in page
    assert 'id="start-lease"' in page and 'id="stop-lease"' not in page and 'id="resize-form"' not in page
    assert 'id="end-lease"' in page, "a stopped lease can still be ended"
    assert "Stopped: the cards were released and are not charged" in page
    lease.refresh_from_db()
    assert lease.state == "stopped"
    again = client.post(f"/leases/{lease.pk}/stop/", {"idempotency_key": key}, follow=True)
    assert f"Lease {lease.pk} is stopped" in again.content.decode(), "the same form sent twice answers the same"
    assert lease.events.filter(kind="stopped").count() == 1

    started = client.post(f"/leases/{lease.pk}/start/", {"idempotency_key": key_of(page, "start-form")}, follow=True)
    page = started.content.decode()
    assert f"Lease {lease.pk} is starting again on the same server." in page
    assert "Started again with 2 cards on server" in page and 'id="stop-lease"' in page
    lease.refresh_from_db()
    assert lease.state == "active" and Allocation.objects.filter(lease=lease, period__upper_inf=True).count() == 2


def test_start_without_free_cards_says_so_and_changes_nothing(client, alice, charlie, offer, lease):
    lease_stop(lease=lease)
    lease_create(org=charlie.org, plan="card_hour", gpu_count=1, offer=offer)
    client.force_login(alice.user)
    page = client.get(f"/leases/{lease.pk}/").content.decode()
    response = client.post(f"/leases/{lease.pk}/start/", {"idempotency_key": key_of(page, "start-form")}, follow=True)
    body = response.content.decode()
    assert (
        f"Server {offer.server_id} has not got 2 free cards now; nothing changed. Its cards are rented by other "
        "leases; try again later, or move its volumes to another server."
    ) in body
    lease.refresh_from_db()
    assert lease.state == "stopped" and 'id="start-lease"' in body


def test_another_tenant_gets_404_and_a_member_without_the_role_403(client, alice, charlie, lease):
    client.force_login(charlie.user)
    for verb in ("stop", "start"):
        assert client.post(f"/leases/{lease.pk}/{verb}/", {"idempotency_key": "x"}).status_code == 404
    accountant = MembershipFactory(organization=alice.org, role=Role.BILLING).user
    client.force_login(accountant)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="stop-lease"' not in body
    assert client.post(f"/leases/{lease.pk}/stop/", {"idempotency_key": "y"}).status_code == 403
    lease_stop(lease=lease)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="lease-stopped"' in body and 'id="start-lease"' not in body
    assert client.post(f"/leases/{lease.pk}/start/", {"idempotency_key": "z"}).status_code == 403
    lease.refresh_from_db()
    assert lease.state == "stopped"


def test_the_stopped_lease_page_speaks_chinese(client, alice, lease):
    client.force_login(alice.user)
    active = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "停止租约" in active
    lease_stop(lease=lease)
    page = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in (
        "已停止",
        f"数据卷保留在服务器 {lease.server_id} 上。启动后将在该服务器上重新占用 2 张卡。",
        "重新启动租约",
        "启动租约",
        f"已停止：显卡已释放，不再计费；数据卷保留在服务器 {lease.server_id} 上。",
    ):
        assert words in page, words
    listing = client.get("/leases/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "已停止" in listing


def test_start_while_cards_are_cleaned_after_another_lease_says_when_to_retry_in_both_languages(
    client, alice, charlie, offer, lease
):
    from inventory.models import Gpu

    lease_stop(lease=lease)
    # Another lease used its cards since, and they now wait for cleaning after it: none is alice's to take back.
    lease_end(lease=lease_create(org=charlie.org, plan="card_hour", gpu_count=2, offer=offer))
    Gpu.objects.filter(server_id=offer.server_id).update(needs_cleaning=True)
    client.force_login(alice.user)
    for language, words in (
        ("en", "of its cards are being cleaned after the leases that used them"),
        ("zh-hans", "张显卡正在清理"),
    ):
        client.cookies.load({settings.LANGUAGE_COOKIE_NAME: language})
        page = client.get(f"/leases/{lease.pk}/").content.decode()
        key = key_of(page, "start-form")
        body = client.post(f"/leases/{lease.pk}/start/", {"idempotency_key": key}, follow=True).content.decode()
        assert words in body and ("60" in body)
    lease.refresh_from_db()
    assert lease.state == "stopped"
