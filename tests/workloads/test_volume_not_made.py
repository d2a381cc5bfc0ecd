"""A volume its agent cannot make (issue 16): the agent's "failed" report, or no "ready" within
SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS, sends it to wiping with the reason in `message` (API, /volumes/, the
organisation's log); its agent removes what it made and reports it wiped, which frees the server's disk; and it is
never billed, before or after."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from accounts.models import OrgEvent
from billing import metering
from billing.models import StorageRecord
from tests.workloads import test_volumes
from tests.workloads.test_volumes import made, reported
from workloads import volumes
from workloads.checks import workloads_check
from workloads.models import Volume

store = test_volumes.store  # the fixture: bob's box lending 100 GB for volumes
NOT_MADE = "cannot format its image: mkfs.ext4 exited with 1: No space left on device"


def test_a_failed_report_sends_a_volume_never_made_to_wiping_with_the_agents_message(alice, store):
    vid = made(alice, store.server_id, "data", 60)
    free_before = 100 - 60
    assert volumes.storage_taken(Volume.objects.get(pk=vid).server) == 100 - free_before
    reported(store.agent, [{"id": vid, "state": "failed", "message": NOT_MADE}])

    body = alice.api.get(f"/api/v1/volumes/{vid}/").json()
    assert (body["state"], body["message"], body["ready_at"]) == ("wiping", NOT_MADE, None)
    desired = store.agent.desired()
    assert desired["volumes"] == [] and desired["volumes_to_wipe"] == [vid]  # the agent removes what it made
    event = OrgEvent.objects.get(organization=alice.org, kind="volume_failed")
    assert (event.object_id, event.params["message"], event.actor) == (vid, NOT_MADE, None)
    # Its agent reports the leftovers gone: wiped, its disk free again, its name free again.
    reported(store.agent, [{"id": vid, "state": "wiped"}])
    volume = Volume.objects.get(pk=vid)
    assert (volume.state, volume.message) == ("wiped", NOT_MADE)
    assert volumes.storage_taken(volume.server) == 0
    assert (
        alice.api.post(
            "/api/v1/volumes/", {"name": "data", "server": store.server_id, "size_gb": 100}, format="json"
        ).status_code
        == 201
    )
    # A repeated failure report changes nothing more.
    reported(store.agent, [{"id": vid, "state": "failed", "message": "again"}])
    assert OrgEvent.objects.filter(kind="volume_failed").count() == 1


def test_a_volume_never_made_is_never_billed_while_one_made_is_from_its_creation(alice, store):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        kept = made(alice, store.server_id, "kept", 10)
        lost = made(alice, store.server_id, "lost", 10)
        clock.move_to(start + timedelta(minutes=10))
        reported(store.agent, [{"id": kept, "state": "ready"}, {"id": lost, "state": "failed", "message": "x"}])
        reported(store.agent, [{"id": lost, "state": "wiped"}])
        clock.move_to(start + timedelta(hours=3))
        metering.meter()
    billed = {v: list(StorageRecord.objects.filter(volume_id=v).order_by("start")) for v in (kept, lost)}
    assert billed[lost] == []
    created = Volume.objects.get(pk=kept).created_at
    assert billed[kept][0].start == created  # a made volume: from its creation, the time it was made in included
    assert sum(r.seconds for r in billed[kept]) > 2 * 3600


def test_a_volume_still_creating_after_the_timeout_is_given_up_and_a_late_ready_changes_nothing(alice, store, settings):
    settings.SUANLI_VOLUME_CREATE_TIMEOUT_SECONDS = 30 * 60
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        vid = made(alice, store.server_id, "slow", 10)
        clock.move_to(start + timedelta(minutes=29))
        assert workloads_check()["volumes_not_made"] == 0
        clock.move_to(start + timedelta(minutes=31))
        assert workloads_check()["volumes_not_made"] == 1
        assert workloads_check()["volumes_not_made"] == 0  # once
        volume = Volume.objects.get(pk=vid)
        assert (volume.state, volume.message) == ("wiping", "the server did not make it within 30 minutes")
        reported(store.agent, [{"id": vid, "state": "ready", "used_gb": 1}])  # too late: still wiped
        volume.refresh_from_db()
        assert (volume.state, volume.ready_at) == ("wiping", None)
        clock.move_to(start + timedelta(hours=3))
        metering.meter()
    assert not StorageRecord.objects.filter(volume_id=vid).exists()
    assert OrgEvent.objects.get(kind="volume_failed").params["message"].startswith("the server did not make it")


def test_a_volume_held_in_grace_before_it_was_made_is_given_up_too_and_released_as_creating(alice, store):
    first, second = made(alice, store.server_id, "one", 10), made(alice, store.server_id, "two", 10)
    volumes.volumes_hold(org=alice.org, wipe_at=timezone.now() + timedelta(days=15))
    reported(store.agent, [{"id": first, "state": "failed", "message": NOT_MADE}])
    one = Volume.objects.get(pk=first)
    assert (one.state, one.wipe_at, one.message) == ("wiping", None, NOT_MADE)
    volumes.volumes_release(org=alice.org)
    assert Volume.objects.get(pk=second).state == "creating"  # not made yet: not "ready"


@pytest.mark.parametrize(("language", "words"), [("en", "Not made: "), ("zh-hans", "未能创建：")])
def test_the_volumes_page_says_why_a_volume_was_not_made(alice, store, language, words):
    vid = made(alice, store.server_id, "data", 10)
    reported(store.agent, [{"id": vid, "state": "failed", "message": NOT_MADE}])
    client = Client(headers={"accept-language": language})
    client.force_login(alice.user)
    html = client.get("/volumes/").content.decode()
    assert f"{words}{NOT_MADE}" in html
