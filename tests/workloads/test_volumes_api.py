"""GET|POST /api/v1/volumes/ and GET|DELETE /api/v1/volumes/{id}/ (API.md "Volumes"): pricing from the offer,
every refusal, the server's lent disk under concurrency, tenancy; and the two fields providers set for them
(Server.volume_disk_gb, Offer.storage_gb_month_price)."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connections

from accounts.errors import DomainError
from accounts.models import Role
from inventory.models import Server
from tests.conftest import make_persona, register_server
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server
from tests.support.db import own_connection
from tests.workloads.conftest import Box, enrolled_box, rent_with_workload
from workloads import volumes
from workloads.models import Volume

SECONDS = ("id", "name", "server", "size_gb", "used_gb", "state", "price_per_gb_month", "currency", "wipe_at")


def lend_storage(provider, box: Box, *, disk_gb: int = 100, price: str = "0.1000") -> None:
    """The provider lends `disk_gb` of `box` for volumes at `price` per GB-month (its offer, through the API)."""
    Server.objects.filter(pk=box.server_id).update(volume_disk_gb=disk_gb)
    changed = provider.api.patch(f"/api/v1/offers/{box.offer_id}/", {"storage_gb_month_price": price}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["storage_gb_month_price"] == price


@pytest.fixture
def store(bob, box) -> Box:
    lend_storage(bob, box)
    return box


def create(persona, server: int, name: str = "data", size_gb: int = 10):
    return persona.api.post("/api/v1/volumes/", {"name": name, "server": server, "size_gb": size_gb}, format="json")


def test_a_volume_is_created_priced_from_the_offer_and_read_back(alice, store):
    response = create(alice, store.server_id, size_gb=20)
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(SECONDS) <= set(body) and "created_at" in body
    assert body["name"] == "data" and body["server"] == store.server_id and body["size_gb"] == 20
    assert body["state"] == "creating" and body["wipe_at"] is None
    assert Decimal(body["price_per_gb_month"]) == Decimal("0.1") and body["currency"] == alice.org.currency
    assert Decimal(body["used_gb"]) == 0
    assert alice.api.get(f"/api/v1/volumes/{body['id']}/").json() == body
    listed = alice.api.get("/api/v1/volumes/").json()
    assert [v["id"] for v in listed["results"]] == [body["id"]]


def test_the_price_is_converted_into_the_organisations_currency_like_a_leases(alice, bob, store, settings):
    assert bob.api.patch(f"/api/v1/offers/{store.offer_id}/", {"currency": "CNY"}, format="json").status_code == 200
    alice.org.currency = "USD"
    alice.org.save(update_fields=["currency"])
    body = create(alice, store.server_id).json()
    rate = settings.SUANLI_FX_RATES[("CNY", "USD")]
    assert body["currency"] == "USD"
    assert Decimal(body["price_per_gb_month"]) == (Decimal("0.1") * rate).quantize(Decimal("0.0001"))


def test_a_server_whose_offer_prices_no_storage_is_refused_on_server(alice, box):
    Server.objects.filter(pk=box.server_id).update(volume_disk_gb=100)
    response = create(alice, box.server_id)
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["server"] == ["This server lends no volume storage."]
    assert not Volume.objects.exists()


def test_a_server_without_a_live_offer_is_unknown(alice, bob, store):
    assert bob.api.delete(f"/api/v1/offers/{store.offer_id}/").status_code == 204
    response = create(alice, store.server_id)
    assert response.status_code == 400 and "server" in response.json()["error"]["fields"]


def test_more_than_the_lent_disk_is_409_no_storage_and_a_wiped_volume_frees_it(alice, store):
    assert create(alice, store.server_id, "a", 60).status_code == 201
    response = create(alice, store.server_id, "b", 41)
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_storage"
    assert create(alice, store.server_id, "b", 40).status_code == 201
    first = Volume.objects.get(name="a")
    assert alice.api.delete(f"/api/v1/volumes/{first.pk}/").status_code == 202
    # Wiping still holds the disk until the agent says the data is gone.
    assert create(alice, store.server_id, "c", 1).status_code == 409
    Volume.objects.filter(pk=first.pk).update(state="wiped", wiped_at=first.created_at)
    assert create(alice, store.server_id, "c", 60).status_code == 201


@pytest.mark.parametrize("name", ["", "Data", "a_b", "a" * 64, "dä", "a b"])
def test_bad_names_are_400_on_name(alice, store, name):
    response = create(alice, store.server_id, name=name)
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]


@pytest.mark.parametrize("size", [0, -1, 100_001, "ten", None, 1.5])
def test_bad_sizes_are_400_on_size_gb(alice, store, size):
    response = create(alice, store.server_id, size_gb=size)
    assert response.status_code == 400 and "size_gb" in response.json()["error"]["fields"]


def test_a_name_is_unique_among_the_organisations_live_volumes_only(alice, charlie, store):
    assert create(alice, store.server_id, "data").status_code == 201
    again = create(alice, store.server_id, "data")
    assert again.status_code == 400 and again.json()["error"]["code"] == "duplicate_name"
    assert create(charlie, store.server_id, "data").status_code == 201  # another organisation's name is its own
    Volume.objects.filter(organization=alice.org).update(state="wiped", wiped_at=Volume.objects.first().created_at)
    assert create(alice, store.server_id, "data").status_code == 201


def test_delete_wipes_and_is_idempotent(alice, store):
    vid = create(alice, store.server_id).json()["id"]
    first = alice.api.delete(f"/api/v1/volumes/{vid}/")
    assert first.status_code == 202 and first.json()["state"] == "wiping"
    volume = Volume.objects.get(pk=vid)
    assert volume.wipe_requested_at is not None
    again = alice.api.delete(f"/api/v1/volumes/{vid}/")
    assert again.status_code == 202 and again.json()["state"] == "wiping"
    assert Volume.objects.get(pk=vid).wipe_requested_at == volume.wipe_requested_at


def test_delete_while_a_live_lease_mounts_it_is_409_volume_in_use(alice, store):
    from tests.workloads.test_volumes import reported

    vid = create(alice, store.server_id).json()["id"]
    reported(store.agent, [{"id": vid, "state": "ready"}])
    rent_with_workload(
        alice, gpu_count=1, workload={"image": "ubuntu:24.04", "volumes": [{"volume": vid, "path": "/data"}]}
    )
    response = alice.api.delete(f"/api/v1/volumes/{vid}/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "volume_in_use"
    assert Volume.objects.get(pk=vid).state == "ready"


def test_another_tenants_volume_answers_like_a_missing_one(alice, charlie, store):
    vid = create(alice, store.server_id).json()["id"]
    missing = charlie.api.get("/api/v1/volumes/999999999/")
    for response in (charlie.api.get(f"/api/v1/volumes/{vid}/"), charlie.api.delete(f"/api/v1/volumes/{vid}/")):
        assert response.status_code == 404 and response.json() == missing.json()
    assert charlie.api.get("/api/v1/volumes/").json()["results"] == []
    assert Volume.objects.get(pk=vid).state == "creating"


def test_any_member_reads_and_only_operating_roles_create_or_delete(alice, store):
    vid = create(alice, store.server_id).json()["id"]
    viewer = make_persona(alice.org, role=Role.BILLING)  # reads, cannot operate
    assert viewer.api.get(f"/api/v1/volumes/{vid}/").status_code == 200
    assert viewer.api.get("/api/v1/volumes/").status_code == 200
    assert create(viewer, store.server_id, "other").status_code == 403
    assert viewer.api.delete(f"/api/v1/volumes/{vid}/").status_code == 403
    assert Volume.objects.get(pk=vid).state == "creating"
    member = make_persona(alice.org, role=Role.MEMBER)
    assert create(member, store.server_id, "other").status_code == 201


def test_a_provider_only_organisation_cannot_create_volumes(bob, store):
    response = create(bob, store.server_id)
    assert response.status_code == 403 and not Volume.objects.exists()


def test_the_server_and_offer_apis_carry_the_two_storage_fields(bob, h100):
    server = register_server(bob, h100, name="store-1", disk_gb=4000, volume_disk_gb=1500)
    assert server["volume_disk_gb"] == 1500
    too_much = bob.api.post(
        "/api/v1/servers/",
        {"name": "store-2", "region": "cn-east-1", "gpu_model": h100.pk, "gpu_count": 1, "cpu_cores": 8,
         "ram_gb": 64, "disk_gb": 100, "volume_disk_gb": 101},
        format="json",
    )  # fmt: skip
    assert too_much.status_code == 400 and "volume_disk_gb" in too_much.json()["error"]["fields"]
    offer = bob.api.post(
        "/api/v1/offers/",
        {"server": server["id"], "prices": {"card_hour": "2.0000"}, "storage_gb_month_price": "0.0800"},
        format="json",
    )
    assert offer.status_code == 201, offer.content
    assert offer.json()["storage_gb_month_price"] == "0.0800"
    zero = bob.api.patch(f"/api/v1/offers/{offer.json()['id']}/", {"storage_gb_month_price": "0"}, format="json")
    assert zero.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_two_creates_racing_for_the_last_gigabytes_never_overbook():
    server = online_server(organization=ProviderFactory(), gpu_model=GpuModelFactory(), volume_disk_gb=10)
    server.offers.update(storage_gb_month_price=Decimal("0.1"))
    orgs = [OrganizationFactory() for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(org) -> None:
        own_connection()
        try:
            start.wait()
            volumes.volume_create(org=org, server=server, name="last", size_gb=6)
            outcomes.append("created")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=attempt, args=(org,)) for org in orgs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created", "no_storage"]
    assert Volume.objects.filter(server=server).count() == 1


def test_a_second_box_of_the_same_provider_lends_its_own_disk(alice, bob, h100, store):
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    lend_storage(bob, other, disk_gb=5)
    assert create(alice, other.server_id, "small", 5).status_code == 201
    assert create(alice, other.server_id, "more", 1).json()["error"]["code"] == "no_storage"
    assert create(alice, store.server_id, "big", 100).status_code == 201


# --- the provider's pages set the same two fields ----------------------------------------------------------------


def test_the_register_page_sets_the_disk_for_volumes_and_refuses_more_than_the_disk(client, bob, h100):
    client.force_login(bob.user)
    base = {"region": "cn-east-1", "gpu_model": h100.pk, "gpu_count": 8, "cpu_cores": 64, "ram_gb": 512}
    too_much = client.post("/servers/", {**base, "name": "node-1", "disk_gb": 100, "volume_disk_gb": 101})
    assert too_much.status_code == 400 and 'id="id_volume_disk_gb_errors"' in too_much.content.decode()
    assert not Server.objects.filter(organization=bob.org).exists()
    assert (
        client.post("/servers/", {**base, "name": "node-1", "disk_gb": 4000, "volume_disk_gb": 1000}).status_code == 302
    )
    assert client.post("/servers/", {**base, "name": "node-2", "disk_gb": 4000}).status_code == 302
    lent = dict(Server.objects.filter(organization=bob.org).values_list("name", "volume_disk_gb"))
    assert lent == {"node-1": 1000, "node-2": 0}


def test_the_offer_pages_set_and_clear_the_storage_price(client, bob, box):
    from inventory.models import Offer

    client.force_login(bob.user)
    offer = Offer.objects.get(pk=box.offer_id)
    form = {"card_hour_price": "2.5000", "min_gpus": 1, "currency": offer.currency}
    page = client.get(f"/provider/offers/{offer.pk}/edit/").content.decode()
    assert 'name="storage_gb_month_price"' in page
    saved = client.post(f"/provider/offers/{offer.pk}/edit/", {**form, "storage_gb_month_price": "0.0500"})
    assert saved.status_code == 302, saved.content
    offer.refresh_from_db()
    assert offer.storage_gb_month_price == Decimal("0.05")
    assert 'value="0.0500"' in client.get(f"/provider/offers/{offer.pk}/edit/").content.decode()
    assert client.post(f"/provider/offers/{offer.pk}/edit/", form).status_code == 302
    offer.refresh_from_db()
    assert offer.storage_gb_month_price is None


def test_a_volume_its_organisation_cannot_pay_for_is_refused_with_402_and_not_made(alice, bob, store, staff):
    from billing import services as billing

    Server.objects.filter(pk=store.server_id).update(volume_disk_gb=5000)
    billing.terms_set(org=alice.org, mode="prepaid", credit_limit=Decimal(0), currency=alice.org.currency)
    # 1,000 GB at 0.10 a GB-month is 100 a month: its first hour (about 0.14) is more than a zero balance.
    refused = create(alice, store.server_id, size_gb=1000)
    assert refused.status_code == 402, refused.content
    error = refused.json()["error"]
    assert error["code"] == "insufficient_funds" and Decimal(error["needed"]) > 0
    assert Decimal(error["shortfall"]) == Decimal(error["needed"])
    assert not Volume.objects.filter(organization=alice.org).exists()
    billing.adjustment_record(org=alice.org, amount="5.00", currency=alice.org.currency, reference="BANK-VOL-1")
    assert create(alice, store.server_id, size_gb=1000).status_code == 201
