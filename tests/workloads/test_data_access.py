"""Data access without cards (issue 16): GET|POST /api/v1/data-access/, GET|DELETE /api/v1/data-access/{id}/, the
agent's desired `data_access` and its reports, admission (in grace with an empty balance; 402 outside it), the
maximum duration, the end on a wipe, and what volumes refuse while a session mounts them."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from scheduler import services as scheduler
from scheduler.models import Lease
from tests.billing.test_balances import credit, prepaid
from tests.workloads.conftest import Box, add_key
from tests.workloads.test_volumes import made, mount_lease, reported
from tests.workloads.test_volumes_api import lend_storage
from workloads import volumes
from workloads.checks import workloads_check
from workloads.models import DataAccess, Volume, Workload


@pytest.fixture
def store(bob, box) -> Box:
    lend_storage(bob, box)
    return box


FIELDS = {
    "id",
    "server",
    "volumes",
    "state",
    "connect",
    "price_per_hour",
    "currency",
    "created_at",
    "started_at",
    "ends_at",
    "ended_at",
    "end_reason",
}


def ready_volume(persona, box: Box, name: str = "data") -> int:
    vid = made(persona, box.server_id, name)
    reported(box.agent, [{"id": vid, "state": "ready"}])
    return vid


def open_session(persona, box: Box, volume_ids: list[int], key_ids: list[int]):
    body = {"server": box.server_id, "volumes": volume_ids, "ssh_keys": key_ids}
    return persona.api.post("/api/v1/data-access/", body, format="json")


def opened(persona, box: Box, volume_ids: list[int], key_ids: list[int]) -> dict:
    response = open_session(persona, box, volume_ids, key_ids)
    assert response.status_code == 201, response.content
    return response.json()


def test_a_session_is_served_without_cards_runs_and_ends(alice, store, settings):
    settings.SUANLI_DATA_ACCESS_IMAGE = "example/ssh:1"
    vid = ready_volume(alice, store)
    key = add_key(alice)
    before = timezone.now()
    body = opened(alice, store, [vid], [key["id"]])
    assert set(body) == FIELDS
    assert body["state"] == "pending" and body["connect"] is None and body["started_at"] is None
    assert body["volumes"] == [vid] and body["server"] == store.server_id
    assert Decimal(body["price_per_hour"]) == Decimal("0.05") and body["currency"] == alice.org.currency
    session = DataAccess.objects.get(pk=body["id"])
    assert before + timedelta(hours=4) <= session.ends_at <= timezone.now() + timedelta(hours=4)

    desired = store.agent.desired()
    assert desired["workloads"] == []
    [item] = desired["data_access"]
    workload = Workload.objects.get(data_access=session)
    assert item["id"] == workload.pk and item["lease"] is None and item["data_access"] == session.pk
    assert item["gpus"] == [] and item["image"] == "example/ssh:1" and item["ports"] == [22]
    assert item["ssh_keys"] == [key["public_key"]]
    assert item["volumes"] == [{"id": vid, "path": "/data/data", "size_gb": 10}]
    assert item["limits"] == {"cpus": 1, "memory_mb": 1024, "disk_gb": 2}
    assert item["owner"] == str(alice.org.pk) and item["stop_by"] is not None

    store.agent.report([{"id": workload.pk, "state": "running", "ports": {"22": 40122}}])
    shown = alice.api.get(f"/api/v1/data-access/{body['id']}/").json()
    assert shown["state"] == "running" and shown["started_at"] is not None
    assert shown["connect"] == {
        "kind": "ssh",
        "host": "gpu1.example.com",
        "port": 40122,
        "user": "root",
        "command": "ssh -p 40122 root@gpu1.example.com",
    }
    assert [s["id"] for s in alice.api.get("/api/v1/data-access/").json()["results"]] == [body["id"]]

    ended = alice.api.delete(f"/api/v1/data-access/{body['id']}/")
    assert ended.status_code == 200
    assert ended.json()["state"] == "ended" and ended.json()["end_reason"] == "deleted"
    assert ended.json()["connect"] is None
    assert store.agent.desired()["data_access"] == []
    again = alice.api.delete(f"/api/v1/data-access/{body['id']}/")
    assert again.status_code == 200 and again.json()["ended_at"] == ended.json()["ended_at"]
    store.agent.report([{"id": workload.pk, "state": "cleaned"}])
    assert Workload.objects.get(pk=workload.pk).state == "cleaned"


def test_the_price_is_the_offers_when_it_names_one_converted_into_the_organisations_currency(
    alice, bob, store, settings
):
    changed = bob.api.patch(
        f"/api/v1/offers/{store.offer_id}/", {"data_access_hour_price": "0.5000", "currency": "CNY"}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["data_access_hour_price"] == "0.5000"
    zero = bob.api.patch(f"/api/v1/offers/{store.offer_id}/", {"data_access_hour_price": "0"}, format="json")
    assert zero.status_code == 400 and "data_access_hour_price" in zero.json()["error"]["fields"]
    alice.org.currency = "USD"
    alice.org.save(update_fields=["currency"])
    vid = ready_volume(alice, store)
    body = opened(alice, store, [vid], [add_key(alice)["id"]])
    rate = settings.SUANLI_FX_RATES[("CNY", "USD")]
    assert body["currency"] == "USD"
    assert Decimal(body["price_per_hour"]) == (Decimal("0.5") * rate).quantize(Decimal("0.0001"))


def test_another_tenant_gets_404_and_cannot_open_on_its_volumes(alice, charlie, store):
    vid = ready_volume(alice, store)
    body = opened(alice, store, [vid], [add_key(alice)["id"]])
    assert charlie.api.get(f"/api/v1/data-access/{body['id']}/").status_code == 404
    assert charlie.api.delete(f"/api/v1/data-access/{body['id']}/").status_code == 404
    assert DataAccess.objects.get(pk=body["id"]).state == "open"
    assert charlie.api.get("/api/v1/data-access/").json()["results"] == []
    refused = open_session(charlie, store, [vid], [add_key(charlie)["id"]])
    assert refused.status_code == 400 and refused.json()["error"]["fields"]["volumes"] == [f"Unknown volume {vid}."]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"volumes": []}, "volumes"),
        ({"volumes": "1"}, "volumes"),
        ({"volumes": [True]}, "volumes"),
        ({"volumes": [0]}, "volumes"),
        ({"ssh_keys": []}, "ssh_keys"),
        ({"ssh_keys": [999999]}, "ssh_keys"),
        ({"server": 999999}, "server"),
        ({"server": "x"}, "server"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_input_is_400_naming_the_field(alice, store, body, field):
    vid = ready_volume(alice, store)
    full = {"server": store.server_id, "volumes": [vid], "ssh_keys": [add_key(alice)["id"]], **body}
    response = alice.api.post("/api/v1/data-access/", full, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not DataAccess.objects.exists()


def test_another_users_key_and_a_volume_on_another_server_or_not_made_are_400(alice, store, h100, bob):
    from tests.workloads.conftest import enrolled_box

    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    lend_storage(bob, other)
    vid = ready_volume(alice, store)
    elsewhere = ready_volume(alice, other, "elsewhere")
    creating = made(alice, store.server_id, "creating")
    mine = add_key(alice)["id"]
    from tests.conftest import make_persona

    colleague = make_persona(alice.org)
    theirs = add_key(colleague)["id"]
    cases = [([vid], [theirs], "ssh_keys"), ([vid, elsewhere], [mine], "volumes"), ([creating], [mine], "volumes")]
    for volume_ids, key_ids, field in cases:
        response = open_session(alice, store, volume_ids, key_ids)
        assert response.status_code == 400 and field in response.json()["error"]["fields"], response.content


def test_a_volume_mounted_by_a_live_lease_or_another_session_is_409(alice, store):
    vid, other = ready_volume(alice, store), ready_volume(alice, store, "other")
    key = add_key(alice)["id"]
    lease = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert lease.status_code == 201
    refused = open_session(alice, store, [vid], [key])
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "volume_in_use"
    scheduler.lease_end(lease=Lease.objects.get(pk=lease.json()["id"]))
    opened(alice, store, [vid], [key])
    twice = open_session(alice, store, [other, vid], [key])
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "volume_in_use"
    # While the session mounts it, the volume is neither deleted nor mounted by a new lease.
    deleted = alice.api.delete(f"/api/v1/volumes/{vid}/")
    assert deleted.status_code == 409 and deleted.json()["error"]["code"] == "volume_in_use"
    mounted = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert mounted.status_code == 409 and mounted.json()["error"]["code"] == "volume_in_use"


def test_a_session_takes_no_card_and_runs_beside_a_lease_that_holds_them_all(alice, store):
    vid = ready_volume(alice, store)
    full = mount_lease(alice, [], gpu_count=8)
    assert full.status_code == 201, full.content
    body = opened(alice, store, [vid], [add_key(alice)["id"]])
    desired = store.agent.desired()
    assert len(desired["workloads"]) == 1 and len(desired["workloads"][0]["gpus"]) == 8
    assert [item["data_access"] for item in desired["data_access"]] == [body["id"]]


def test_in_grace_it_opens_with_an_empty_balance_outside_grace_it_needs_money(alice, store):
    vid = ready_volume(alice, store)
    key = add_key(alice)["id"]
    prepaid(alice.org)  # nothing paid in
    refused = open_session(alice, store, [vid], [key])
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_funds"
    assert not DataAccess.objects.exists() and not Workload.objects.filter(data_access__isnull=False).exists()
    volumes.volumes_hold(org=alice.org, wipe_at=timezone.now() + timedelta(days=15))
    body = opened(alice, store, [vid], [key])
    assert body["state"] == "pending"
    alice.api.delete(f"/api/v1/data-access/{body['id']}/")
    volumes.volumes_release(org=alice.org)
    credit(alice.org, "10.00", "W1")
    assert open_session(alice, store, [vid], [key]).status_code == 201


def test_it_ends_by_itself_after_its_maximum_duration(alice, store, settings):
    settings.SUANLI_DATA_ACCESS_MAX_HOURS = 2
    vid = ready_volume(alice, store)
    body = opened(alice, store, [vid], [add_key(alice)["id"]])
    session = DataAccess.objects.get(pk=body["id"])
    assert session.ends_at - session.created_at == timedelta(hours=2)
    with time_machine.travel(session.ends_at + timedelta(seconds=1), tick=False):
        assert store.agent.desired()["data_access"] == []  # the agent removes it (it had stop_by too)
        assert workloads_check()["data_access_expired"] == 1
        assert workloads_check()["data_access_expired"] == 0
    session.refresh_from_db()
    assert (session.state, session.end_reason, session.ended_at) == ("ended", "expired", session.ends_at)


def test_the_wipe_job_ends_the_session_first_and_then_wipes_the_volume(alice, store):
    vid = ready_volume(alice, store)
    kept = ready_volume(alice, store, "kept")
    key = add_key(alice)["id"]
    now = timezone.now()
    volumes.volumes_hold(org=alice.org, wipe_at=now + timedelta(days=1))
    Volume.objects.filter(pk=kept).update(wipe_at=now + timedelta(days=5))
    body = opened(alice, store, [vid], [key])
    other = opened(alice, store, [kept], [key])
    with time_machine.travel(now + timedelta(days=1, seconds=1), tick=False):
        late = open_session(alice, store, [vid], [key])
        assert late.status_code == 409  # in the other session still, and its grace is over
        assert volumes.wipe_volumes() == {"wiping": 1}
    session = DataAccess.objects.get(pk=body["id"])
    assert (session.state, session.end_reason) == ("ended", "wiped")
    assert Volume.objects.get(pk=vid).state == "wiping"
    assert DataAccess.objects.get(pk=other["id"]).state == "open"
    desired = store.agent.desired()
    assert desired["volumes_to_wipe"] == [vid]
    assert [item["data_access"] for item in desired["data_access"]] == [other["id"]]


def test_a_volume_left_in_an_open_session_is_never_wiped_by_the_due_wipes_alone(alice, store):
    vid = ready_volume(alice, store)
    now = timezone.now()
    volumes.volumes_hold(org=alice.org, wipe_at=now + timedelta(hours=1))
    opened(alice, store, [vid], [add_key(alice)["id"]])
    assert volumes.volumes_wipe_due(now=now + timedelta(hours=2)) == []
    assert Volume.objects.get(pk=vid).state == "grace"


def test_a_session_its_agent_never_ran_is_over_when_it_ends_and_one_stuck_shows_on_the_fleet_page(
    alice, store, staff, settings
):
    from django.test import Client

    vid, other = ready_volume(alice, store), ready_volume(alice, store, "other")
    key = add_key(alice)["id"]
    never = opened(alice, store, [vid], [key])
    alice.api.delete(f"/api/v1/data-access/{never['id']}/")
    assert Workload.objects.get(data_access_id=never["id"]).state == "cleaned"  # nothing on the host to clean
    stuck = opened(alice, store, [other], [key])
    workload = Workload.objects.get(data_access_id=stuck["id"])
    store.agent.report([{"id": workload.pk, "state": "pulling"}])
    settings.SUANLI_WORKLOAD_STUCK_SECONDS = 0
    client = Client()
    client.force_login(staff.user)
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=False):
        page = client.get("/staff/fleet/")
    assert page.status_code == 200
    body = page.content.decode()
    assert f'data-workload="{workload.pk}"' in body and f"Data access {stuck['id']}" in body


def test_a_ready_volume_open_in_a_session_shows_in_use_and_is_not_offered_to_the_rent_form(alice, store):
    vid = ready_volume(alice, store)
    server = volumes.Volume.objects.get(pk=vid).server
    body = opened(alice, store, [vid], [add_key(alice)["id"]])
    assert alice.api.get(f"/api/v1/volumes/{vid}/").json()["state"] == "in_use"
    assert [v["state"] for v in alice.api.get("/api/v1/volumes/").json()["results"] if v["id"] == vid] == ["in_use"]
    volume = Volume.objects.get(pk=vid)
    assert volumes.is_mounted(volume) and volumes.shown_state(volume) == "in_use"
    assert vid not in [v.pk for v in volumes.mountable_volumes(alice.org, server)]
    assert alice.api.delete(f"/api/v1/data-access/{body['id']}/").status_code in (200, 204)
    assert alice.api.get(f"/api/v1/volumes/{vid}/").json()["state"] == "ready"
    assert vid in [v.pk for v in volumes.mountable_volumes(alice.org, server)]
