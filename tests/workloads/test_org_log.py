"""The organisation's log (issue 16, "the event is in the organisation's log"): volumes made, deleted and wiped
(with the server and the time), grace started, released and ended, leases ended for lack of funds; read by members
at /org/log/ in both languages and at GET /api/v1/org/events/ with cursor paging; never another tenant's; rows
that never change."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from accounts import org_log
from accounts.models import OrgEvent, User
from billing.models import FundsNotice
from scheduler import services as scheduler_services
from scheduler.models import Lease
from tests.billing import test_storage_grace
from tests.billing.test_balances import MARCH, PRICES, credit, prepaid
from tests.billing.test_funds import MINUTE
from tests.factories import online_server
from tests.workloads.test_volumes import made, reported
from tests.workloads.test_volumes_api import lend_storage
from workloads.models import Volume

# The grace tests' fixtures, shared.
clock, check, server = test_storage_grace.clock, test_storage_grace.check, test_storage_grace.server
broke, wipe_job = test_storage_grace.broke, test_storage_grace.wipe_job


@pytest.fixture
def store(bob, box):
    lend_storage(bob, box)
    return box


def events(persona, **query) -> dict:
    response = persona.api.get("/api/v1/org/events/", query)
    assert response.status_code == 200, response.content
    return response.json()


def test_a_volumes_life_is_logged_with_who_did_it_and_the_server_and_time_of_its_wipe(alice, charlie, store):
    vid = made(alice, store.server_id, "data", 10)
    assert alice.api.delete(f"/api/v1/volumes/{vid}/").status_code == 202
    reported(store.agent, [{"id": vid, "state": "wiped"}])
    wiped_at = Volume.objects.get(pk=vid).wiped_at

    body = events(alice)
    kinds = [e["kind"] for e in body["results"]]
    assert kinds == ["volume_wiped", "volume_deleted", "volume_created"]  # newest first
    wiped, deleted, created = body["results"]
    assert created["actor"] == deleted["actor"] == "alice@example.com"
    assert wiped["actor"] is None  # the platform, on its agent's report
    assert (created["object_type"], created["object_id"]) == ("volume", vid)
    assert created["message"] == f"Volume data (10 GB) created on server {store.server_id}."
    assert wiped["params"]["server"] == store.server_id
    assert wiped["params"]["wiped_at"] == wiped_at.isoformat()
    assert str(store.server_id) in wiped["message"] and wiped_at.strftime("%Y-%m-%d %H:%M UTC") in wiped["message"]
    # A second report of the same wipe, and a repeated DELETE, log nothing more.
    reported(store.agent, [{"id": vid, "state": "wiped"}])
    assert alice.api.delete(f"/api/v1/volumes/{vid}/").status_code == 202
    assert OrgEvent.objects.filter(organization=alice.org).count() == 3
    # Another tenant sees none of it, however it asks.
    assert events(charlie)["results"] == []
    foreign = charlie.api.get("/api/v1/org/events/", HTTP_X_ORGANIZATION=str(alice.org.pk))
    assert foreign.status_code in (200, 404) and "volume" not in foreign.content.decode()


def test_the_api_pages_by_cursor_newest_first_without_repeats_when_rows_arrive(alice):
    for n in range(5):
        org_log.record(alice.org, org_log.LEASE_STOPPED_FUNDS, params={"lease": n}, object_type="lease", object_id=n)
    first = events(alice, page_size=2)
    assert [e["params"]["lease"] for e in first["results"]] == [4, 3] and first["previous"] is None
    org_log.record(alice.org, org_log.LEASE_STOPPED_FUNDS, params={"lease": 99})  # arrives while paging
    second = alice.api.get(first["next"]).json()
    assert [e["params"]["lease"] for e in second["results"]] == [2, 1]
    third = alice.api.get(second["next"]).json()
    assert [e["params"]["lease"] for e in third["results"]] == [0] and third["next"] is None
    assert alice.api.get("/api/v1/org/events/", {"cursor": "nonsense"}).status_code == 404
    assert alice.api.get("/api/v1/org/events/", {"page_size": "x"}).status_code == 400


def test_grace_started_then_ended_by_the_wipe_job_is_logged_per_volume(clock, alice, broke, check, wipe_job):
    data, logs = broke["data"], broke["logs"]
    started = OrgEvent.objects.filter(organization=alice.org, kind="grace_started").order_by("object_id")
    assert [e.object_id for e in started] == sorted([data.pk, logs.pk])
    wipe_at = Volume.objects.get(pk=data.pk).wipe_at
    assert started[0].params["wipe_at"] == wipe_at.isoformat() and started[0].actor is None
    assert wipe_at.strftime("%Y-%m-%d %H:%M UTC") in org_log.message(started[0])
    check()  # the next run changes nothing: grace began once
    assert OrgEvent.objects.filter(organization=alice.org, kind="grace_started").count() == 2

    clock.move_to(wipe_at + MINUTE)
    assert wipe_job()["wiping"] == 2
    ended = OrgEvent.objects.filter(organization=alice.org, kind="grace_ended")
    assert sorted(e.object_id for e in ended) == sorted([data.pk, logs.pk])
    assert org_log.message(ended[0]).endswith("is being wiped.")
    assert wipe_job()["wiping"] == 0 and ended.count() == 2


def test_grace_released_by_a_top_up_is_logged_per_volume(clock, alice, broke, check):
    credit(alice.org, "1000.00", "W2")
    check()
    released = OrgEvent.objects.filter(organization=alice.org, kind="grace_released")
    assert sorted(e.object_id for e in released) == sorted([broke["data"].pk, broke["logs"].pk])
    assert Volume.objects.filter(pk=broke["data"].pk, state="ready").exists()
    check()
    assert released.count() == 2


def test_a_lease_ended_for_lack_of_funds_is_logged(clock, alice, bob, check):
    online_server(organization=bob.org, offer=PRICES, name="fl-1")
    prepaid(alice.org)
    credit(alice.org, "10.00", "W1")
    lease = scheduler_services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    clock.move_to(MARCH + 61 * MINUTE)
    check()
    clock.move_to(MARCH + 121 * MINUTE)
    check()
    assert Lease.objects.get(pk=lease.pk).end_reason == "funds_exhausted"
    assert FundsNotice.objects.filter(organization=alice.org, kind="stopped").exists()
    event = OrgEvent.objects.get(organization=alice.org, kind="lease_stopped_funds")
    assert (event.object_type, event.object_id, event.at) == ("lease", lease.pk, MARCH + 121 * MINUTE)
    assert org_log.message(event) == f"Lease {lease.pk} was ended: the balance ran out."


def test_the_log_never_changes_and_a_deleted_user_leaves_their_email(alice):
    doomed = User.objects.create_user(email="gone@example.com", password="x")  # noqa: S106
    event = org_log.record(alice.org, org_log.VOLUME_CREATED, params={"name": "d"}, actor=doomed)
    with pytest.raises(IntegrityError), transaction.atomic():
        OrgEvent.objects.filter(pk=event.pk).update(kind="volume_wiped")
    with pytest.raises(IntegrityError), transaction.atomic():
        OrgEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(IntegrityError), transaction.atomic():
        OrgEvent.objects.filter(pk=event.pk).update(actor=None, params={"name": "other"})
    doomed.delete()  # the one change allowed: the link to a deleted user goes, its e-mail stays
    event.refresh_from_db()
    assert (event.actor_id, event.actor_email, event.params) == (None, "gone@example.com", {"name": "d"})
    assert org_log.actor_text(event) == "gone@example.com"


@pytest.mark.parametrize(
    ("language", "heading", "words"),
    [("en", "Organisation log", "created on server"), ("zh-hans", "组织日志", "创建于服务器")],
)
def test_members_read_the_log_page_in_their_language_and_reach_it_from_the_menu(
    alice, charlie, store, language, heading, words
):
    made(alice, store.server_id, "data", 10)
    client = Client(headers={"accept-language": language})
    client.force_login(alice.user)
    page = client.get("/org/log/")
    assert page.status_code == 200
    html = page.content.decode()
    assert heading in html and words in html and "alice@example.com" in html
    home = client.get("/dashboard/").content.decode()
    assert 'href="/org/log/"' in home
    other = Client(headers={"accept-language": language})
    other.force_login(charlie.user)
    theirs = other.get("/org/log/").content.decode()
    assert words not in theirs and "alice@example.com" not in theirs


def test_the_page_is_paginated(alice):
    for n in range(55):
        org_log.record(alice.org, org_log.LEASE_STOPPED_FUNDS, params={"lease": 1000 + n})
    client = Client()
    client.force_login(alice.user)
    first = client.get("/org/log/").content.decode()
    assert "Lease 1054 was ended" in first and "Lease 1004 was ended" not in first and 'rel="next"' in first
    second = client.get("/org/log/?page=2").content.decode()
    assert "Lease 1004 was ended" in second and "Lease 1054 was ended" not in second


def test_a_data_access_session_opening_and_ending_is_logged(alice, store, settings):
    from tests.workloads.conftest import add_key
    from tests.workloads.test_data_access import opened, ready_volume

    settings.SUANLI_DATA_ACCESS_IMAGE = "example/ssh:1"
    vid = ready_volume(alice, store)
    key = add_key(alice)
    session = opened(alice, store, [vid], [key["id"]])
    assert alice.api.delete(f"/api/v1/data-access/{session['id']}/").status_code in (200, 202, 204)
    assert alice.api.delete(f"/api/v1/data-access/{session['id']}/").status_code in (200, 202, 204)  # once
    ended, opened_event = events(alice)["results"][:2]
    assert (opened_event["kind"], opened_event["actor"]) == ("data_access_opened", "alice@example.com")
    assert opened_event["message"] == (
        f"Data access session {session['id']} opened on server {store.server_id} for volumes data."
    )
    assert ended["kind"] == "data_access_ended" and ended["object_id"] == session["id"]
    assert ended["message"] == (
        f"Data access session {session['id']} on server {store.server_id} ended: ended by the customer."
    )
    assert OrgEvent.objects.filter(kind="data_access_ended").count() == 1


def test_a_volume_moved_to_another_server_is_logged_at_its_switch(alice, bob, h100, settings, tmp_path):
    import hashlib

    from tests.workloads.conftest import enrolled_box
    from tests.workloads.test_volume_moves import ask, post, put_chunk, ready_volume

    settings.SUANLI_TRANSFER_DIR = tmp_path / "transfers"
    source = enrolled_box(bob, h100, name="mv-a", prefix="mv0a")
    lend_storage(bob, source)
    target = enrolled_box(bob, h100, name="mv-b", prefix="mv0b")
    lend_storage(bob, target, price="0.2500")
    vid = ready_volume(alice, source)
    move = ask(alice, vid, target.server_id).json()["id"]
    stream = b"volume bytes"
    digest = hashlib.sha256(stream).hexdigest()
    assert put_chunk(source.agent, move, 0, stream).status_code == 200
    assert post(source.agent, move, "sent", {"chunks": 1, "bytes": len(stream), "sha256": digest}).status_code == 200
    assert OrgEvent.objects.filter(kind="volume_moved").count() == 0  # not before the switch
    done = post(target.agent, move, "received", {"bytes": len(stream), "sha256": digest})
    assert done.status_code == 200 and done.json()["state"] == "done"
    post(target.agent, move, "received", {"bytes": len(stream), "sha256": digest})  # a repeat logs nothing more
    event = OrgEvent.objects.get(organization=alice.org, kind="volume_moved")
    assert (event.object_id, event.params["from_server"], event.params["to_server"]) == (
        vid,
        source.server_id,
        target.server_id,
    )
    assert org_log.message(event) == f"Volume data moved from server {source.server_id} to server {target.server_id}."
