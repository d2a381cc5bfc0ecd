"""Providers change the disk a registered server lends for volumes (issue 16): PATCH /api/v1/servers/{id}/
{"volume_disk_gb"} and the form on the provider's server page; never above the server's disk (400) nor below what
its volumes take (409 volume_disk_in_use with taken_gb), decided under the lock a volume's creation takes."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connections
from django.test import Client

from accounts.errors import DomainError
from accounts.models import Role
from inventory import services
from inventory.models import Server
from tests.conftest import make_persona
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server
from tests.support.db import own_connection
from tests.workloads import test_volumes
from tests.workloads.test_volumes import made, reported
from workloads import volumes
from workloads.models import Volume

store = test_volumes.store  # the fixture: bob's box (8000 GB of disk) lending 100 GB for volumes


def patch(persona, server_id: int, body):
    return persona.api.patch(f"/api/v1/servers/{server_id}/", body, format="json")


def lent(server_id: int) -> int:
    return Server.objects.get(pk=server_id).volume_disk_gb


def test_a_provider_raises_and_lowers_the_disk_lent_for_volumes(bob, store):
    response = patch(bob, store.server_id, {"volume_disk_gb": 500})
    assert response.status_code == 200, response.content
    assert response.json()["volume_disk_gb"] == 500 and "gpus" in response.json()
    assert bob.api.get(f"/api/v1/servers/{store.server_id}/").json()["volume_disk_gb"] == 500
    assert patch(bob, store.server_id, {"volume_disk_gb": 0}).status_code == 200 and lent(store.server_id) == 0
    assert patch(bob, store.server_id, {"volume_disk_gb": 8000}).status_code == 200  # the whole disk


def test_never_below_what_its_volumes_take_until_they_are_wiped(alice, bob, store):
    first = made(alice, store.server_id, "one", 30)
    made(alice, store.server_id, "two", 10)
    refused = patch(bob, store.server_id, {"volume_disk_gb": 39})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "volume_disk_in_use" and error["taken_gb"] == 40 and "40 GB" in error["message"]
    assert lent(store.server_id) == 100
    assert patch(bob, store.server_id, {"volume_disk_gb": 40}).status_code == 200  # exactly what they take
    # A deleted volume still takes its disk until its agent reports it wiped.
    assert alice.api.delete(f"/api/v1/volumes/{first}/").status_code == 202
    assert patch(bob, store.server_id, {"volume_disk_gb": 10}).status_code == 409
    reported(store.agent, [{"id": first, "state": "wiped"}])
    assert patch(bob, store.server_id, {"volume_disk_gb": 10}).status_code == 200 and lent(store.server_id) == 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"volume_disk_gb": 8001}, "volume_disk_gb"),  # above the server's disk
        ({"volume_disk_gb": -1}, "volume_disk_gb"),
        ({"volume_disk_gb": "ten"}, "volume_disk_gb"),
        ({"volume_disk_gb": True}, "volume_disk_gb"),
        ({"volume_disk_gb": None}, "volume_disk_gb"),
        ({}, "volume_disk_gb"),
        ({"volume_disk_gb": 5, "name": "renamed"}, "name"),  # nothing else changes through it
        ({"volume_disk_gb": 5, "organization": 1}, "organization"),
    ],
)
def test_bad_changes_are_400_and_change_nothing(bob, store, body, field):
    response = patch(bob, store.server_id, body)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    server = Server.objects.get(pk=store.server_id)
    assert (server.volume_disk_gb, server.name) == (100, "box-1")


def test_another_tenant_gets_404_and_a_billing_member_403(bob, charlie, store):
    assert patch(charlie, store.server_id, {"volume_disk_gb": 5}).status_code == 404
    billing = make_persona(bob.org, role=Role.BILLING)
    assert patch(billing, store.server_id, {"volume_disk_gb": 5}).status_code == 403
    assert lent(store.server_id) == 100


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("en", "Its volumes take 40 GB of the disk lent for volumes"),
        ("zh-hans", "其存储卷已占用提供给存储卷的磁盘中的 40 GB"),
    ],
)
def test_the_server_page_changes_it_and_says_why_it_cannot_go_lower(alice, bob, store, language, words):
    made(alice, store.server_id, "one", 40)
    client = Client(headers={"accept-language": language})
    client.force_login(bob.user)
    page = client.get(f"/servers/{store.server_id}/").content.decode()
    assert 'id="volume-disk-form"' in page and 'value="100"' in page
    refused = client.post(f"/servers/{store.server_id}/volume-disk/", {"volume_disk_gb": "39"})
    assert refused.status_code == 409 and words in refused.content.decode() and lent(store.server_id) == 100
    bad = client.post(f"/servers/{store.server_id}/volume-disk/", {"volume_disk_gb": "lots"})
    assert bad.status_code == 400 and lent(store.server_id) == 100
    done = client.post(f"/servers/{store.server_id}/volume-disk/", {"volume_disk_gb": "250"}, follow=True)
    assert done.status_code == 200 and lent(store.server_id) == 250
    assert "250 GB" in done.content.decode()


def test_a_page_post_by_another_tenant_is_404(charlie, store):
    client = Client()
    client.force_login(charlie.user)
    assert client.post(f"/servers/{store.server_id}/volume-disk/", {"volume_disk_gb": "1"}).status_code == 404
    assert lent(store.server_id) == 100


@pytest.mark.django_db(transaction=True)
def test_a_shrink_racing_volume_creations_never_leaves_volumes_above_the_disk_lent():
    """The shrink and each creation lock the server row: whatever the order, the volumes fit in what is lent."""
    server = online_server(organization=ProviderFactory(), gpu_model=GpuModelFactory(), volume_disk_gb=100)
    server.offers.update(storage_gb_month_price=Decimal("0.1"))
    orgs = [OrganizationFactory() for _ in range(4)]
    start = threading.Barrier(5)
    outcomes: list[object] = []

    def create(org) -> None:
        own_connection()
        try:
            start.wait()
            volumes.volume_create(org=org, server=server, name="data", size_gb=30)
            outcomes.append("made")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections["default"].close()

    def shrink() -> None:
        own_connection()
        try:
            start.wait()
            services.server_volume_disk_set(server=server, volume_disk_gb=60)
            outcomes.append("shrunk")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=create, args=(org,)) for org in orgs] + [threading.Thread(target=shrink)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.refresh_from_db()
    assert volumes.storage_taken(server) <= server.volume_disk_gb
    assert Volume.objects.count() == outcomes.count("made") >= 2
    assert set(outcomes) <= {"made", "shrunk", "no_storage", "volume_disk_in_use"}
