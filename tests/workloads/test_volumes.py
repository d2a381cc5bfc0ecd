"""Volumes in use: a lease's workload mounts them (pinned to their server), the agent is told which to keep, mount
and wipe, its reports move them on, in_use follows the lease's life, and the grace services billing calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from scheduler import services as scheduler
from scheduler.models import Lease
from tests.workloads.conftest import Box, add_key, enrolled_box, rent
from tests.workloads.test_volumes_api import create, lend_storage
from workloads import agent_channel, volumes
from workloads.models import DesiredVersion, Volume, VolumeMount
from workloads.tasks import wipe_volumes_task


@pytest.fixture
def store(bob, box) -> Box:
    lend_storage(bob, box)
    return box


@pytest.fixture
def other_store(bob, h100) -> Box:
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    lend_storage(bob, other)
    return other


def made(persona, server: int, name: str = "data", size_gb: int = 10) -> int:
    response = create(persona, server, name, size_gb)
    assert response.status_code == 201, response.content
    return response.json()["id"]


def ready_made(persona, box: Box, name: str = "data", size_gb: int = 10) -> int:
    """A volume its agent has reported made (only a ready volume is mounted by a new lease)."""
    vid = made(persona, box.server_id, name, size_gb)
    reported(box.agent, [{"id": vid, "state": "ready"}])
    return vid


def mount_lease(persona, mounts: list[dict], **body):
    body.setdefault("gpu_count", 1)
    return rent(persona, workload={"image": "ubuntu:24.04", "volumes": mounts}, **body)


def report_volumes(agent, entries: Any):
    """A signed agent report carrying `volumes` (raw: bad shapes are sent as they are)."""
    agent.seq += 1
    sample = {"utilization_pct": 10, "memory_used_mb": 100, "temperature_c": 50, "power_w": 200, "ecc_dbe": 0}
    gpus = [{"uuid": uuid, **sample, "xid_errors": []} for uuid in agent.uuids]
    body = {"seq": agent.seq, "sent_at": datetime.now(UTC).isoformat(), "gpus": gpus, "volumes": entries}
    raw = json.dumps(body).encode()
    return agent.client.post("/api/v1/agent/reports/", data=raw, content_type="application/json", **agent._signed(raw))


def reported(agent, entries: list[dict]) -> None:
    response = report_volumes(agent, entries)
    assert response.status_code == 202, response.content


FUTURE = (datetime.now(UTC) + timedelta(days=40)).replace(microsecond=0).isoformat()


def state_of(persona, vid: int) -> str:
    return persona.api.get(f"/api/v1/volumes/{vid}/").json()["state"]


# --- mounting ----------------------------------------------------------------------------------------------------


def test_a_mounted_volume_pins_the_lease_to_its_server_and_reaches_the_agent(alice, store, other_store):
    vid = made(alice, other_store.server_id)
    # Not made yet: no lease mounts it (its workload would run without it if its server failed to make it).
    early = mount_lease(alice, [{"volume": vid, "path": "/data/"}])
    assert early.status_code == 409 and early.json()["error"]["code"] == "volume_not_ready"
    assert not Lease.objects.exists() and not VolumeMount.objects.exists()
    reported(other_store.agent, [{"id": vid, "state": "ready"}])
    before = other_store.agent.desired()["version"]
    response = mount_lease(alice, [{"volume": vid, "path": "/data/"}])
    assert response.status_code == 201, response.content
    lease = response.json()
    assert lease["workload"]["volumes"] == [{"volume": vid, "path": "/data"}]
    assert [w["server"] for w in lease["workloads"]] == [other_store.server_id]
    desired = other_store.agent.desired()
    [item] = desired["workloads"]
    assert item["volumes"] == [{"id": vid, "path": "/data", "size_gb": 10}]
    assert item["owner"] == str(alice.org.pk)  # the agent mounts only this organisation's volumes into it
    owner = str(alice.org.pk)
    assert desired["volumes"] == [{"id": vid, "size_gb": 10, "owner": owner}] and desired["volumes_to_wipe"] == []
    assert desired["version"] > before
    assert store.agent.desired()["volumes"] == [] and store.agent.desired()["workloads"] == []
    assert state_of(alice, vid) == "in_use"


def test_a_new_volume_alone_changes_the_desired_version(alice, store):
    first = store.agent.desired()
    assert first["volumes"] == [] and first["volumes_to_wipe"] == []
    vid = made(alice, store.server_id)
    second = store.agent.desired()
    assert second["version"] == first["version"] + 1 and second["volumes"] == [
        {"id": vid, "size_gb": 10, "owner": str(alice.org.pk)}
    ]
    assert store.agent.desired()["version"] == second["version"]  # nothing changed: same version
    alice.api.delete(f"/api/v1/volumes/{vid}/")
    third = store.agent.desired()
    assert third["version"] == second["version"] + 1
    assert third["volumes"] == [] and third["volumes_to_wipe"] == [vid]


def test_in_use_while_the_lease_lives_and_ready_again_when_it_ends(alice, store):
    vid = made(alice, store.server_id)
    assert report_volumes(store.agent, [{"id": vid, "state": "ready", "used_gb": 0}]).status_code == 202
    assert state_of(alice, vid) == "ready"
    lease = mount_lease(alice, [{"volume": vid, "path": "/data"}]).json()
    assert state_of(alice, vid) == "in_use"
    listed = alice.api.get("/api/v1/volumes/").json()["results"]
    assert [v["state"] for v in listed] == ["in_use"]
    scheduler.lease_end(lease=Lease.objects.get(pk=lease["id"]))
    assert state_of(alice, vid) == "ready"
    assert store.agent.desired()["volumes"] == [{"id": vid, "size_gb": 10, "owner": str(alice.org.pk)}]  # kept
    # ...and mounted again by the next lease, on the same server.
    again = mount_lease(alice, [{"volume": vid, "path": "/work"}])
    assert again.status_code == 201, again.content
    assert alice.api.delete(f"/api/v1/volumes/{vid}/").json()["error"]["code"] == "volume_in_use"


def test_a_workload_item_carries_only_the_mounts_of_its_own_server(alice, store, other_store):
    from inventory.models import Server
    from workloads.models import WorkloadSpec

    vid = ready_made(alice, store)
    lease = mount_lease(alice, [{"volume": vid, "path": "/data"}]).json()
    spec = WorkloadSpec.objects.get(lease_id=lease["id"])
    here, there = Server.objects.get(pk=store.server_id), Server.objects.get(pk=other_store.server_id)
    assert volumes.spec_volumes(spec, here) == [{"id": vid, "path": "/data", "size_gb": 10}]
    assert volumes.spec_volumes(spec, there) == []  # cards there after a resize or failover: no volume to mount


def test_a_volume_mounted_by_another_live_lease_is_409_volume_in_use(alice, store):
    vid = ready_made(alice, store)
    assert mount_lease(alice, [{"volume": vid, "path": "/data"}]).status_code == 201
    response = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert response.status_code == 409 and response.json()["error"]["code"] == "volume_in_use"
    assert Lease.objects.filter(organization=alice.org).count() == 1


def test_another_organisations_volume_cannot_be_mounted_and_answers_like_a_missing_id(alice, charlie, store):
    vid = made(alice, store.server_id)
    theirs = mount_lease(charlie, [{"volume": vid, "path": "/data"}])
    missing = mount_lease(charlie, [{"volume": 999_999_999, "path": "/data"}])
    assert theirs.status_code == 400 and missing.status_code == 400
    assert theirs.json()["error"]["fields"] == {"workload": {"volumes": [f"Unknown volume {vid}."]}}
    assert missing.json()["error"]["fields"] == {"workload": {"volumes": ["Unknown volume 999999999."]}}
    assert not VolumeMount.objects.exists() and not Lease.objects.filter(organization=charlie.org).exists()
    assert charlie.api.get(f"/api/v1/volumes/{vid}/").status_code == 404


def test_volumes_on_two_servers_or_another_server_asked_for_are_400(alice, store, other_store):
    here, there = ready_made(alice, store, "here"), ready_made(alice, other_store, "there")
    both = mount_lease(alice, [{"volume": here, "path": "/a"}, {"volume": there, "path": "/b"}])
    assert both.status_code == 400 and "one server" in both.json()["error"]["fields"]["workload"]["volumes"][0]
    elsewhere = mount_lease(alice, [{"volume": here, "path": "/a"}], offer=other_store.offer_id)
    assert elsewhere.status_code == 400 and "another server" in str(elsewhere.json()["error"]["fields"])
    same = mount_lease(alice, [{"volume": here, "path": "/a"}], offer=store.offer_id)
    assert same.status_code == 201, same.content


def test_wiping_and_wiped_volumes_cannot_be_mounted(alice, store):
    vid = made(alice, store.server_id)
    alice.api.delete(f"/api/v1/volumes/{vid}/")
    response = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert response.status_code == 400 and not VolumeMount.objects.exists()


@pytest.mark.parametrize(
    "mounts",
    [
        [{"volume": 1, "path": "data"}],
        [{"volume": 1, "path": "/"}],
        [{"volume": 1, "path": "//"}],
        [{"volume": 1, "path": "/data/../etc"}],
        [{"volume": 1, "path": "/proc"}],
        [{"volume": 1, "path": "/sys/fs"}],
        [{"volume": 1, "path": "/dev/sda"}],
        [{"volume": 1, "path": "/a:b"}],
        [{"volume": 1, "path": "/a"}, {"volume": 2, "path": "/a/"}],
        [{"volume": 1, "path": "/a"}, {"volume": 1, "path": "/b"}],
        [{"volume": i, "path": f"/v{i}"} for i in range(1, 10)],
        [{"volume": "1", "path": "/a"}],
        [{"volume": 1, "path": 5}],
        [{"volume": 1}],
        [{"volume": 1, "path": "/a", "extra": 1}],
        "volumes",
    ],
)
def test_bad_mounts_are_400_on_workload_volumes(alice, store, mounts):
    response = mount_lease(alice, mounts)
    assert response.status_code == 400, response.content
    assert "volumes" in response.json()["error"]["fields"]["workload"]
    assert not Lease.objects.exists()


def test_host_access_mounts_volumes_only_under_the_host_mount_roots(alice, bob, h100, settings):
    host = enrolled_box(bob, h100, name="host-1", prefix="h0st", runtime="host", host_access=True)
    lend_storage(bob, host)
    vid = made(alice, host.server_id)
    reported(host.agent, [{"id": vid, "state": "ready"}])
    key = add_key(alice)["id"]

    def host_lease(path: str):
        workload = {"access": "host", "ssh_keys": [key], "volumes": [{"volume": vid, "path": path}]}
        return rent(alice, plan="server_month", servers=1, end_at=FUTURE, workload=workload)

    for path in ("/etc/data", "/home/x", "/usr", "/data-not"):
        refused = host_lease(path)
        assert refused.status_code == 400, (path, refused.content)
        assert refused.json()["error"]["fields"]["workload"]["volumes"] == [volumes.HOST_PATHS]
    assert not VolumeMount.objects.exists()
    made_lease = host_lease("/data/train")
    assert made_lease.status_code == 201, made_lease.content
    [item] = host.agent.desired()["workloads"]
    assert item["access"] == "host" and item["volumes"] == [{"id": vid, "path": "/data/train", "size_gb": 10}]


# --- what the agent reports --------------------------------------------------------------------------------------


def test_reports_make_volumes_ready_and_wiped_and_ignore_other_servers_ids(alice, store, other_store):
    here, there = made(alice, store.server_id, "here"), made(alice, other_store.server_id, "there")
    reported(store.agent, [{"id": here, "state": "ready", "used_gb": 1.5}, {"id": there, "state": "ready"}])
    volume = Volume.objects.get(pk=here)
    assert volume.state == "ready" and volume.ready_at is not None and str(volume.used_gb) == "1.500"
    assert Volume.objects.get(pk=there).state == "creating"  # not that agent's server
    reported(store.agent, [{"id": here, "state": "ready", "used_gb": 3}])
    assert str(Volume.objects.get(pk=here).used_gb) == "3.000"
    reported(store.agent, [{"id": here, "state": "wiped"}])
    assert Volume.objects.get(pk=here).state == "ready"  # only a wiping volume becomes wiped
    alice.api.delete(f"/api/v1/volumes/{here}/")
    reported(store.agent, [{"id": here, "state": "wiped", "used_gb": 0}])
    wiped = Volume.objects.get(pk=here)
    assert wiped.state == "wiped" and wiped.wiped_at is not None and wiped.used_gb == 0
    assert store.agent.desired()["volumes_to_wipe"] == []
    reported(store.agent, [{"id": here, "state": "ready", "used_gb": 9}])
    assert Volume.objects.get(pk=here).state == "wiped"  # a wiped volume stays wiped


def test_a_failed_report_of_a_volume_already_made_changes_nothing(alice, store):
    vid = made(alice, store.server_id)
    reported(store.agent, [{"id": vid, "state": "ready"}])
    reported(store.agent, [{"id": vid, "state": "failed", "message": "cannot mount its image"}])
    volume = Volume.objects.get(pk=vid)
    assert (volume.state, volume.message) == ("ready", "")  # the agent mounts it again (a volume never made:
    # tests/workloads/test_volume_not_made.py)


@pytest.mark.parametrize(
    "entries",
    [
        "x",
        [1],
        [{"id": "1", "state": "ready"}],
        [{"id": True, "state": "ready"}],
        [{"id": 1, "state": "gone"}],
        [{"id": 1}],
        [{"id": 1, "state": "ready"}] * 1025,
    ],
)
def test_bad_volume_reports_are_refused(store, entries):
    response = report_volumes(store.agent, entries)
    assert response.status_code == 400 and "volumes" in response.json()["error"]["message"], response.content
    assert report_volumes(store.agent, []).status_code == 202


def test_used_gb_out_of_range_or_not_a_number_is_clamped_or_ignored():
    parsed = agent_channel.parse_workload_report(
        {"volumes": [{"id": 1, "state": "ready", "used_gb": -5}, {"id": 2, "state": "ready", "used_gb": 1e999},
                     {"id": 3, "state": "ready", "used_gb": "7"}, {"id": 4, "state": "ready", "used_gb": 1e30}]}
    )  # fmt: skip
    assert [entry["used_gb"] for entry in parsed["volumes"]][:3] == [0, None, None]
    assert parsed["volumes"][3]["used_gb"] == volumes.MAX_USED_GB


# --- grace -------------------------------------------------------------------------------------------------------


def test_hold_keeps_volumes_in_grace_refuses_new_mounts_and_release_brings_them_back(alice, charlie, store):
    vid = made(alice, store.server_id)
    theirs = made(charlie, store.server_id, "theirs")
    reported(store.agent, [{"id": vid, "state": "ready"}])
    now = timezone.now()
    assert volumes.volumes_hold(org=alice.org, wipe_at=now + timedelta(days=7), now=now) == 1
    body = alice.api.get(f"/api/v1/volumes/{vid}/").json()
    assert body["state"] == "grace" and body["wipe_at"] is not None
    assert Volume.objects.get(pk=theirs).state == "creating"  # another organisation's volumes are untouched
    assert store.agent.desired()["volumes"] == [
        {"id": vid, "size_gb": 10, "owner": str(alice.org.pk)},
        {"id": theirs, "size_gb": 10, "owner": str(charlie.org.pk)},
    ]
    response = mount_lease(alice, [{"volume": vid, "path": "/data"}])
    assert response.status_code == 409 and response.json()["error"]["code"] == "volume_in_grace"
    assert volumes.volumes_release(org=alice.org) == 1
    released = Volume.objects.get(pk=vid)
    assert released.state == "ready" and released.wipe_at is None
    assert mount_lease(alice, [{"volume": vid, "path": "/data"}]).status_code == 201


def test_wipe_due_wipes_past_grace_volumes_except_those_a_live_lease_still_mounts(alice, store):
    due, mounted, later = (ready_made(alice, store, name) for name in ("due", "mounted", "later"))
    lease = mount_lease(alice, [{"volume": mounted, "path": "/data"}]).json()
    now = timezone.now()
    volumes.volumes_hold(org=alice.org, wipe_at=now - timedelta(seconds=1), now=now)
    Volume.objects.filter(pk=later).update(wipe_at=now + timedelta(days=1))
    wiped = volumes.volumes_wipe_due(now=now)
    assert [v.pk for v in wiped] == [due]
    assert Volume.objects.get(pk=due).state == "wiping" and Volume.objects.get(pk=due).wipe_at is None
    assert {v.pk: v.state for v in Volume.objects.all()} == {due: "wiping", mounted: "grace", later: "grace"}
    assert store.agent.desired()["volumes_to_wipe"] == [due]
    assert volumes.volumes_wipe_due(now=now) == []  # idempotent
    scheduler.lease_end(lease=Lease.objects.get(pk=lease["id"]))
    assert [v.pk for v in volumes.volumes_wipe_due(now=now)] == [mounted]


def test_the_task_and_command_wipe_due_volumes_and_tell_the_listeners(alice, store, capsys):
    first, second = made(alice, store.server_id, "one"), made(alice, store.server_id, "two")
    now = timezone.now()
    volumes.volumes_hold(org=alice.org, wipe_at=now - timedelta(minutes=1), now=now)
    Volume.objects.filter(pk=second).update(wipe_at=now + timedelta(hours=1))
    told: list[list[int]] = []

    def listener(due):
        told.append([v.pk for v in due])

    volumes.wipe_listener_register(listener)
    try:
        assert wipe_volumes_task() == {"wiping": 1}
        Volume.objects.filter(pk=second).update(wipe_at=now - timedelta(minutes=1))
        call_command("wipe_volumes")
        assert "wiping: 1" in capsys.readouterr().out
        call_command("wipe_volumes")
    finally:
        volumes._wipe_listeners.remove(listener)
    assert told == [[first], [second]]


def test_the_desired_digest_is_stored_per_server(alice, store, other_store):
    made(alice, store.server_id)
    store.agent.desired()
    other_store.agent.desired()
    versions = dict(DesiredVersion.objects.values_list("server_id", "version"))
    made(alice, other_store.server_id, "two")
    other_store.agent.desired()
    store.agent.desired()
    after = dict(DesiredVersion.objects.values_list("server_id", "version"))
    assert after[store.server_id] == versions[store.server_id]
    assert after[other_store.server_id] == versions[other_store.server_id] + 1


@pytest.mark.django_db(transaction=True)
def test_two_leases_racing_to_mount_one_volume_never_both_get_it():
    import threading
    from decimal import Decimal

    from django.db import connections

    from accounts.errors import DomainError
    from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, UserFactory, online_server
    from tests.support.db import own_connection
    from workloads import services

    server = online_server(organization=ProviderFactory(), gpu_model=GpuModelFactory(), volume_disk_gb=10)
    server.offers.update(storage_gb_month_price=Decimal("0.1"))
    org, user = OrganizationFactory(), UserFactory()
    volume = volumes.volume_create(org=org, server=server, name="shared", size_gb=5)
    made = {"id": volume.pk, "state": "ready", "used_gb": None, "message": ""}
    volumes.volume_reports_apply(server=server, entries=[made], at=timezone.now())
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt() -> None:
        own_connection()
        try:
            start.wait()
            services.lease_create(
                org=org,
                user=user,
                plan="card_hour",
                gpu_count=1,
                workload={"image": "ubuntu:24.04", "volumes": [{"volume": volume.pk, "path": "/data"}]},
            )
            outcomes.append("created")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "volume_in_use"]
    assert VolumeMount.objects.filter(volume=volume).count() == 1
    assert Lease.objects.filter(organization=org).count() == 1
