"""Customer lease pages: the list, one lease (cards, cost so far, charts, event log), resize and end; the lease
telemetry API behind the charts."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Role
from inventory import telemetry
from inventory.models import Gpu
from scheduler.models import Lease, LeaseEvent
from scheduler.services import lease_create, lease_end
from tests.factories import GpuModelFactory, MembershipFactory, online_server


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="lease-h100", name="Lease H100")
    return online_server(organization=bob.org, gpu_model=model, name="bob-lease-box").offers.get()


@pytest.fixture
def lease(alice, offer) -> Lease:
    return lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer)


def _keys(body: str) -> list[str]:
    return re.findall(r'name="idempotency_key" value="([^"]+)"', body)


def _sample_rows(gpus, moments, util=50.0):
    return [
        (at, gpu.pk, gpu.server_id, util, 4096, 60.0, 300.0, 1400, 0, 0, json.dumps({}))
        for gpu in gpus
        for at in moments
    ]


# --- the list and the page --------------------------------------------------------------------------------


def test_my_leases_lists_the_organisations_leases_only(client, alice, charlie, offer, lease):
    theirs = lease_create(org=charlie.org, plan="card_hour", gpu_count=1, offer=offer)
    client.force_login(alice.user)
    body = client.get("/leases/").content.decode()
    assert f'href="/leases/{lease.pk}/"' in body and f'href="/leases/{theirs.pk}/"' not in body
    assert "Active" in body and "By the card-hour" in body and "USD 2.50" in body
    assert 'href="/leases/"' in body and 'href="/offers/"' in body, "the nav links"


def test_the_lease_page_shows_state_cards_cost_charts_and_the_event_log(client, alice, lease):
    Gpu.objects.filter(allocations__lease=lease).update(
        last_sample={"utilization_pct": 73.0, "memory_used_mb": 20480, "memory_total_mb": 81920},
        last_sample_at=timezone.now(),
    )
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="lease-state"' in body and "Active" in body
    cards = body[body.index('id="lease-cards"') :]
    uuids = list(lease.allocations.values_list("gpu__uuid", flat=True))
    assert len(uuids) == 2 and all(uuid in cards for uuid in uuids)
    assert f"Server {lease.allocations.first().server_id}" in cards and "73 %" in cards and "20.0 / 80 GB" in cards
    assert 'id="lease-cost"' in body and "USD 0.00" in body
    assert f'hx-get="/leases/{lease.pk}/live/"' in body
    assert f'data-telemetry-url="/api/v1/leases/{lease.pk}/telemetry/"' in body
    assert 'data-metric="utilization_pct"' in body and 'data-metric="memory_used_mb"' in body
    assert 'src="/static/vendor/uplot/uPlot.iife.min.js"' in body
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", body)
    events = body[body.index('id="lease-events"') :]
    assert "Created with 2 cards." in events
    assert 'id="resize-form"' in body and 'id="end-lease"' in body
    live = client.get(f"/leases/{lease.pk}/live/").content.decode()
    assert live.lstrip().startswith("{") is False and '<div id="lease-live"' in live and "<html" not in live


def test_cost_so_far_is_the_metered_figure(client, alice, offer):
    start = timezone.now() - timedelta(hours=2)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, start_at=None, now=start)
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    cost = re.search(r'<strong id="lease-cost">USD ([\d.,]+)</strong>', body).group(1)
    assert 9.9 < float(cost) <= 10.01  # 2 cards × 2 h × 2.50


def test_an_ended_lease_shows_every_card_it_held_and_no_actions(client, alice, lease):
    lease_end(lease=lease)
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "Ended" in body and "Ended by you." in body
    assert all(uuid in body for uuid in lease.allocations.values_list("gpu__uuid", flat=True))
    assert 'id="resize-form"' not in body and 'id="end-lease"' not in body
    assert 'data-end="' in body and 'hx-trigger="every 30s"' not in body


# --- resize -----------------------------------------------------------------------------------------------


def test_resize_grows_and_shrinks_a_card_hour_lease(client, alice, lease):
    client.force_login(alice.user)
    response = client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 5, "idempotency_key": "grow"})
    assert response.status_code == 302 and response["Location"] == f"/leases/{lease.pk}/"
    lease.refresh_from_db()
    assert lease.gpu_count == 5
    page = client.get(response["Location"]).content.decode()
    assert "The lease now has 5 cards." in page and "Resized from 2 to 5 cards." in page
    client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 1, "idempotency_key": "shrink"})
    lease.refresh_from_db()
    assert lease.gpu_count == 1
    assert lease.allocations.filter(period__endswith__isnull=True).count() == 1


def test_a_shrink_below_an_offers_minimum_is_refused_beside_the_field(client, alice, offer):
    offer.min_gpus = 2
    offer.save(update_fields=["min_gpus"])
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer)
    client.force_login(alice.user)
    response = client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 1, "idempotency_key": "below"})
    assert response.status_code == 400
    assert re.search(r'id="id_gpu_count_errors" class="field-error">[^<]*minimum', response.content.decode())
    lease.refresh_from_db()
    assert lease.gpu_count == 2 and lease.allocations.filter(period__endswith__isnull=True).count() == 2


def test_a_double_resize_submission_resizes_once(client, alice, lease):
    client.force_login(alice.user)
    for _ in range(2):
        response = client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 4, "idempotency_key": "one-form"})
        assert response.status_code == 302
    assert LeaseEvent.objects.filter(lease=lease, kind="resized").count() == 1


def test_resize_errors_are_shown_beside_the_field(client, alice, lease):
    client.force_login(alice.user)
    response = client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 0, "idempotency_key": "z"})
    assert response.status_code == 400
    assert re.search(
        r'id="id_gpu_count_errors" class="field-error">[^<]*greater than or equal to 1', response.content.decode()
    )
    response = client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 12, "idempotency_key": "big"})
    assert response.status_code == 409
    body = response.content.decode()
    assert re.search(r'id="id_gpu_count_errors" class="field-error">Not enough free cards to grow to 12', body)
    assert "big" not in _keys(body)
    lease.refresh_from_db()
    assert lease.gpu_count == 2


def test_only_a_card_hour_lease_offers_a_resize(client, alice, offer):
    lease = lease_create(
        org=alice.org, plan="server_month", servers=1, offer=offer, end_at=timezone.now() + timedelta(days=30)
    )
    client.force_login(alice.user)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="resize-form"' not in body and 'id="end-lease"' in body


# --- end --------------------------------------------------------------------------------------------------


def test_end_asks_first_then_ends_and_a_second_press_changes_nothing(client, alice, lease):
    client.force_login(alice.user)
    page = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'data-confirm="End this lease now?' in page
    key = _keys(page[page.index('id="end-form"') :])[0]
    # Without the browser's dialog (no JavaScript) the page asks, keeping the form's key.
    asked = client.post(f"/leases/{lease.pk}/end/", {"idempotency_key": key})
    assert asked.status_code == 200 and 'id="end-confirm"' in asked.content.decode()
    assert key in _keys(asked.content.decode())
    lease.refresh_from_db()
    assert lease.state == "active"
    ended = client.post(f"/leases/{lease.pk}/end/", {"idempotency_key": key, "confirm": "1"})
    assert ended.status_code == 302
    lease.refresh_from_db()
    assert lease.state == "ended" and not lease.allocations.filter(period__endswith__isnull=True).exists()
    assert "has ended" in client.get(ended["Location"]).content.decode()
    again = client.post(f"/leases/{lease.pk}/end/", {"idempotency_key": key, "confirm": "1"})
    assert again.status_code == 302
    other_tab = client.post(f"/leases/{lease.pk}/end/", {"idempotency_key": "another", "confirm": "1"})
    assert other_tab.status_code == 302
    assert "already over" in client.get(other_tab["Location"]).content.decode()
    assert LeaseEvent.objects.filter(lease=lease, kind="ended").count() == 1


def test_ending_a_reservation_cancels_it(client, alice, offer):
    lease = lease_create(
        org=alice.org, plan="card_hour", gpu_count=1, offer=offer, start_at=timezone.now() + timedelta(days=1)
    )
    client.force_login(alice.user)
    assert "Cancel reservation" in client.get(f"/leases/{lease.pk}/").content.decode()
    client.post(f"/leases/{lease.pk}/end/", {"idempotency_key": "c", "confirm": "1"})
    lease.refresh_from_db()
    assert lease.state == "cancelled"


# --- who may see and do what ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("get", "live/"), ("post", "resize/"), ("post", "end/")])
def test_another_organisations_lease_is_not_found(client, charlie, lease, method, suffix):
    client.force_login(charlie.user)
    data = {"gpu_count": 1, "confirm": "1", "idempotency_key": "x"} if method == "post" else {}
    response = getattr(client, method)(f"/leases/{lease.pk}/{suffix}", data)
    assert response.status_code == 404
    lease.refresh_from_db()
    assert (lease.state, lease.gpu_count) == ("active", 2)


def test_visitors_are_sent_to_sign_in(client, lease):
    for path in ("/leases/", f"/leases/{lease.pk}/", f"/leases/{lease.pk}/live/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    poll = client.get(f"/leases/{lease.pk}/live/", HTTP_HX_REQUEST="true")
    assert poll.status_code == 204 and poll["HX-Redirect"].startswith("/accounts/login/")


def test_a_billing_member_may_look_but_not_resize_or_end(client, alice, lease):
    accountant = MembershipFactory(organization=alice.org, role=Role.BILLING).user
    client.force_login(accountant)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="lease-cards"' in body and 'id="resize-form"' not in body and 'id="end-lease"' not in body
    assert client.post(f"/leases/{lease.pk}/resize/", {"gpu_count": 3}).status_code == 403
    assert client.post(f"/leases/{lease.pk}/end/", {"confirm": "1"}).status_code == 403
    lease.refresh_from_db()
    assert (lease.state, lease.gpu_count) == ("active", 2)


# --- language ---------------------------------------------------------------------------------------------


def test_the_lease_pages_speak_chinese(client, alice, lease):
    client.force_login(alice.user)
    listing = client.get("/leases/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in ("我的租约", "按卡时计费", "进行中", "每卡每小时"):
        assert words in listing, words
    page = client.get(f"/leases/{lease.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    for words in (
        "目前费用",
        "事件日志",
        "结束租约",
        "调整卡数",
        "已创建，共 2 张卡。",
        "占用起始",
        "每张卡的利用率和显存",
    ):
        assert words in page, words
    assert "年" in page and "月" in page, "dates in the Chinese format"


# --- the telemetry API behind the charts ------------------------------------------------------------------


def test_lease_telemetry_has_only_the_leases_cards_over_the_time_it_held_them(alice, offer):
    now = timezone.now().replace(microsecond=0)
    start = now - timedelta(minutes=30)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=start)
    held = list(Gpu.objects.filter(allocations__lease=lease).order_by("index"))
    others = list(Gpu.objects.filter(server=offer.server).exclude(pk__in=[g.pk for g in held]))
    before = [start - timedelta(minutes=m) for m in (20, 10)]
    during = [start + timedelta(minutes=m) for m in (5, 15, 25)]
    telemetry.copy_samples(_sample_rows(held, before, util=99.0) + _sample_rows(held + others, during))
    response = alice.api.get(
        f"/api/v1/leases/{lease.pk}/telemetry/",
        {"since": (start - timedelta(hours=1)).isoformat(), "until": now.isoformat(), "step": 30},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["lease"] == lease.pk and body["step"] == 30 and body["source"] == "raw"
    assert sorted(gpu["uuid"] for gpu in body["gpus"]) == sorted(g.uuid for g in held)
    for gpu in body["gpus"]:
        assert gpu["server"] == offer.server_id
        assert [p["utilization_pct"] for p in gpu["points"]] == [50.0, 50.0, 50.0], "nothing from before the lease"


def test_lease_telemetry_leaves_out_rollup_buckets_shared_with_the_tenant_before(alice, offer):
    start = timezone.now().replace(second=30, microsecond=0) - timedelta(hours=3)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer, now=start)
    gpu = Gpu.objects.get(allocations__lease=lease)
    minute = start.replace(second=0)
    with connection.cursor() as cursor:
        for bucket, util in [(minute, 99.0), (minute + timedelta(minutes=1), 40.0)]:
            cursor.execute(
                "INSERT INTO inventory_gpusample_1m (gpu_id, bucket, server_id, samples, utilization_pct, "
                "memory_used_mb) VALUES (%s, %s, %s, 6, %s, 1024)",
                [gpu.pk, bucket, gpu.server_id, util],
            )
    since = minute - timedelta(minutes=30)
    response = alice.api.get(
        f"/api/v1/leases/{lease.pk}/telemetry/",
        {"since": since.isoformat(), "until": (minute + timedelta(minutes=30)).isoformat(), "step": 60},
    )
    assert response.status_code == 200, response.content
    points = response.json()["gpus"][0]["points"]
    assert [p["utilization_pct"] for p in points] == [40.0], "the minute the lease started in is not its alone"


def test_lease_telemetry_checks_its_parameters_and_tenancy(alice, charlie, lease):
    url = f"/api/v1/leases/{lease.pk}/telemetry/"
    assert alice.api.get(url).status_code == 200
    assert alice.api.get(url, {"since": "garbage"}).status_code == 400
    assert alice.api.get(url, {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}).status_code == 400
    assert alice.api.get(url, {"since": "2020-01-01T00:00:00Z", "step": 1}).status_code == 400
    foreign = charlie.api.get(url)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"


def test_the_charts_request_works_with_the_page_session(client, alice, lease):
    client.force_login(alice.user)
    response = client.get(f"/api/v1/leases/{lease.pk}/telemetry/", HTTP_X_ORGANIZATION=str(alice.org.pk))
    assert response.status_code == 200
    assert len(response.json()["gpus"]) == 2
