"""The volumes page (/volumes/), the rent form's volume and the lease page's mounts (issue 16): what a customer sees
and every refusal, for each persona (another tenant's volume is 404, a role that may not operate gets 403), in
English and 简体中文, within the Content-Security-Policy."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from inventory.models import Server
from scheduler.models import Lease
from tests.conftest import make_persona
from tests.factories import GpuModelFactory, online_server
from tests.support.pages import assert_page_keeps_to_the_policy, forms_of
from workloads import services, volumes
from workloads.models import Template, Volume, VolumeMount, VolumeState


@pytest.fixture
def offer(bob):
    """Bob's server lending 100 GB for volumes at 0.10 per GB-month (in alice's currency, so no conversion)."""
    model = GpuModelFactory(slug="volume-h100", name="Volume H100")
    server = online_server(organization=bob.org, gpu_model=model, name="bob-vol-box")
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=100)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.1000")
    offer.save(update_fields=["storage_gb_month_price"])
    return offer


@pytest.fixture
def bare(bob):
    """Another of bob's servers, whose offer lends no storage."""
    return online_server(organization=bob.org, name="bob-bare-box")


def _public_key() -> str:
    blob = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return f"{blob.decode()} alice@laptop"


def _signed_in(persona, language: str = "") -> Client:
    client = Client()
    client.force_login(persona.user)
    if language:
        client.cookies["django_language"] = language
    return client


def _ready(persona, offer, name: str = "datasets", size_gb: int = 20) -> Volume:
    """A volume of `persona`'s organisation that the server's agent has made."""
    volume = volumes.volume_create(org=persona.org, server=offer.server, name=name, size_gb=size_gb)
    volumes.volume_reports_apply(
        server=offer.server,
        entries=[{"id": volume.pk, "state": "ready", "used_gb": Decimal("1.5"), "message": ""}],
        at=timezone.now(),
    )
    volume.refresh_from_db()
    assert volume.state == VolumeState.READY
    return volume


def _row(body: str, volume: Volume) -> str:
    match = re.search(rf'<tr data-volume="{volume.pk}"[^>]*>(.*?)</tr>', body, re.S)
    assert match, f"no row for volume {volume.pk}"
    return match.group(1)


def _state(body: str, volume: Volume) -> str:
    return re.search(r'class="volume-state">([^<]*)<', _row(body, volume)).group(1).strip()


def _create(client: Client, **fields):
    return client.post("/volumes/", {"name": "datasets", "size_gb": 10, **fields})


# --- the list ---------------------------------------------------------------------------------------------------


def test_the_page_lists_the_organisations_volumes_with_state_price_and_monthly_cost(alice, charlie, offer, bare):
    ready = _ready(alice, offer, size_gb=20)
    volumes.volume_create(org=charlie.org, server=offer.server, name="charlies-secret", size_gb=5)
    response = _signed_in(alice).get("/volumes/")
    assert response.status_code == 200
    assert_page_keeps_to_the_policy(response)
    body = response.content.decode()
    row = _row(body, ready)
    assert "datasets" in row and f"<td>{offer.server_id}</td>" in row and "20 GB" in row and "1.5 GB" in row
    assert _state(body, ready) == "Ready"
    currency = alice.org.currency
    assert f"{currency} 0.10" in row and f"{currency} 2.00" in row, row  # 20 GB x 0.10 a month
    assert "charlies-secret" not in body
    # The create form offers the server that lends storage (with what is left: 100 - 20 - charlie's 5), not the other.
    form = next(f for f in forms_of(body) if f.get("action") == "/volumes/")
    assert form.get("method") == "post"
    select = re.search(r'<select name="server".*?</select>', body, re.S).group(0)
    choices = re.findall(r'<option value="(\d+)"[^>]*>([^<]*)</option>', select)
    assert [int(pk) for pk, _label in choices] == [offer.server_id]
    assert "75 GB free" in choices[0][1] and "Volume H100" in choices[0][1] and bare.name not in body
    assert 'href="/volumes/"' in body, "the nav links the page"


def test_each_state_reads_in_words_and_a_volume_in_grace_says_until_when(alice, offer):
    creating = volumes.volume_create(org=alice.org, server=offer.server, name="new-one", size_gb=1)
    held = _ready(alice, offer, name="held")
    wipe_at = timezone.now() + timedelta(days=7)
    Volume.objects.filter(pk=held.pk).update(state=VolumeState.GRACE, wipe_at=wipe_at)
    gone = _ready(alice, offer, name="gone")
    volumes.volume_delete(volume=gone)
    body = _signed_in(alice).get("/volumes/").content.decode()
    assert _state(body, creating) == "Creating"
    assert _state(body, held).startswith("Kept until ") and str(wipe_at.year) in _state(body, held)
    assert _state(body, gone) == "Wiping"
    assert "Delete" not in _row(body, gone), "a wiping volume has no Delete button"
    volumes.volume_reports_apply(
        server=offer.server, entries=[{"id": gone.pk, "state": "wiped", "used_gb": 0, "message": ""}], at=timezone.now()
    )
    body = _signed_in(alice).get("/volumes/").content.decode()
    assert _state(body, gone) == "Wiped"


# --- create -----------------------------------------------------------------------------------------------------


def test_a_volume_is_created_from_the_form(alice, offer):
    client = _signed_in(alice)
    response = _create(client, server=offer.server_id, size_gb=30)
    assert response.status_code == 302 and response["Location"] == "/volumes/"
    volume = Volume.objects.get(organization=alice.org)
    assert (volume.name, volume.size_gb, volume.server_id, volume.state) == (
        "datasets",
        30,
        offer.server_id,
        "creating",
    )
    assert volume.price_per_gb_month == Decimal("0.1") and volume.currency == alice.org.currency
    body = client.get("/volumes/").content.decode()
    assert "Volume datasets is being made" in body and _state(body, volume) == "Creating"


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"name": "Bad Name!"}, "name", "1-63 characters: lower-case letters, digits and"),
        ({"name": ""}, "name", "This field is required."),
        ({"size_gb": 0}, "size_gb", "greater than or equal to 1"),
        ({"size_gb": "lots"}, "size_gb", "Enter a whole number."),
        ({"size_gb": 100001}, "size_gb", "less than or equal to 100000"),
        ({"server": "999999"}, "server", "Select a valid choice."),
        ({"server": "x"}, "server", "Select a valid choice."),
    ],
)
def test_each_bad_input_is_the_forms_error_and_400(alice, offer, fields, field, text):
    response = _create(_signed_in(alice), **{"server": offer.server_id, **fields})
    assert response.status_code == 400
    body = response.content.decode()
    assert re.search(rf'id="id_{field}_errors" class="field-error">[^<]*{re.escape(text)}', body), body[-3000:]
    assert not Volume.objects.exists()
    assert_page_keeps_to_the_policy(response)


def test_a_server_that_lends_no_storage_cannot_be_chosen(alice, offer, bare):
    response = _create(_signed_in(alice), server=bare.pk)
    assert response.status_code == 400 and "Select a valid choice." in response.content.decode()
    assert not Volume.objects.exists()


def test_a_name_the_organisation_already_has_is_refused_beside_the_name(alice, offer):
    _ready(alice, offer)
    response = _create(_signed_in(alice), server=offer.server_id)
    assert response.status_code == 400
    assert re.search(
        r'id="id_name_errors" class="field-error">You already have a volume of this name', response.content.decode()
    )
    assert Volume.objects.filter(organization=alice.org).count() == 1


def test_more_than_the_server_has_left_is_refused_with_what_is_left(alice, offer):
    _ready(alice, offer, name="big", size_gb=90)
    response = _create(_signed_in(alice), server=offer.server_id, size_gb=11)
    assert response.status_code == 409
    body = response.content.decode()
    assert re.search(r'id="id_size_gb_errors" class="field-error">This server has 10 GB of volume storage left', body)
    assert Volume.objects.filter(organization=alice.org).count() == 1


def test_a_member_without_the_role_reads_but_cannot_create_or_delete(alice, offer):
    volume = _ready(alice, offer)
    billing = make_persona(alice.org, role=Role.BILLING, email="billing@alice.example.com")
    client = _signed_in(billing)
    body = client.get("/volumes/").content.decode()
    assert "datasets" in body and 'id="volume-form"' not in body and "/delete/" not in body
    assert _create(client, server=offer.server_id, name="other").status_code == 403
    assert client.post(f"/volumes/{volume.pk}/delete/", {"confirm": "yes"}).status_code == 403
    assert Volume.objects.filter(organization=alice.org).count() == 1
    volume.refresh_from_db()
    assert volume.state == VolumeState.READY


# --- delete -----------------------------------------------------------------------------------------------------


def test_delete_asks_to_confirm_then_wipes(alice, offer):
    volume = _ready(alice, offer)
    client = _signed_in(alice)
    asked = client.post(f"/volumes/{volume.pk}/delete/")
    assert asked.status_code == 200
    assert_page_keeps_to_the_policy(asked)
    body = asked.content.decode()
    assert "Delete the volume datasets?" in body and 'name="confirm" value="yes"' in body
    volume.refresh_from_db()
    assert volume.state == VolumeState.READY, "nothing is wiped before the confirmation"
    done = client.post(f"/volumes/{volume.pk}/delete/", {"confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == "/volumes/"
    volume.refresh_from_db()
    assert volume.state == VolumeState.WIPING and volume.wipe_requested_at is not None
    body = client.get("/volumes/").content.decode()
    assert "Volume datasets is being wiped" in body and _state(body, volume) == "Wiping"


def test_a_volume_a_live_lease_mounts_is_not_deleted_and_the_page_says_why(alice, offer):
    volume = _ready(alice, offer)
    services.lease_create(
        org=alice.org,
        user=alice.user,
        plan="card_hour",
        gpu_count=1,
        offer=offer,
        workload={"image": "nginx:1", "volumes": [{"volume": volume.pk, "path": "/data"}]},
    )
    client = _signed_in(alice)
    assert _state(client.get("/volumes/").content.decode(), volume) == "In use"
    response = client.post(f"/volumes/{volume.pk}/delete/", {"confirm": "yes"})
    assert response.status_code == 409
    assert "Volume datasets is mounted by a live lease" in response.content.decode()
    volume.refresh_from_db()
    assert volume.state == VolumeState.READY


def test_another_tenants_volume_is_404(alice, charlie, offer):
    theirs = _ready(charlie, offer, name="charlies")
    client = _signed_in(alice)
    assert client.post(f"/volumes/{theirs.pk}/delete/").status_code == 404
    assert client.post(f"/volumes/{theirs.pk}/delete/", {"confirm": "yes"}).status_code == 404
    assert client.post("/volumes/999999/delete/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.state == VolumeState.READY
    assert client.get(f"/volumes/{theirs.pk}/delete/").status_code == 405


# --- the rent form and the lease page ---------------------------------------------------------------------------


def _rent(client: Client, offer, **fields):
    data = {"plan": "card_hour", "gpu_count": 1, "idempotency_key": f"k-{timezone.now().timestamp()}", **fields}
    return client.post(f"/offers/{offer.pk}/", data)


def test_the_rent_form_offers_ready_volumes_of_the_offers_server_only(alice, offer, bare):
    client = _signed_in(alice)
    assert 'name="workload-volume"' not in client.get(f"/offers/{offer.pk}/").content.decode(), "none yet"
    ready = _ready(alice, offer)
    volumes.volume_create(org=alice.org, server=offer.server, name="still-making", size_gb=1)
    body = client.get(f"/offers/{offer.pk}/").content.decode()
    assert f'<option value="{ready.pk}">datasets (20 GB)</option>' in body and "still-making" not in body
    assert 'name="workload-volume_path"' in body and 'value="/data"' in body
    assert 'name="workload-volume"' not in client.get(f"/offers/{bare.offers.get().pk}/").content.decode()


def test_renting_with_a_volume_mounts_it_and_the_lease_page_lists_it(alice, offer):
    volume = _ready(alice, offer)
    pytorch = Template.objects.get(organization=None, slug="pytorch-jupyter")
    client = _signed_in(alice)
    response = _rent(
        client,
        offer,
        **{"workload-template": pytorch.pk, "workload-volume": volume.pk, "workload-volume_path": "/mnt/d"},
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    lease = Lease.objects.get(organization=alice.org)
    mount = VolumeMount.objects.unscoped("test").get(spec__lease=lease)
    assert (mount.volume_id, mount.path) == (volume.pk, "/mnt/d")
    page = client.get(f"/leases/{lease.pk}/")
    assert_page_keeps_to_the_policy(page)
    section = re.search(r'id="lease-volumes">(.*?)</section>', page.content.decode(), re.S).group(1)
    assert "datasets" in section and "<code>/mnt/d</code>" in section
    assert _state(client.get("/volumes/").content.decode(), volume) == "In use"
    # Mounted, it is no longer offered to another lease.
    assert f'<option value="{volume.pk}">' not in client.get(f"/offers/{offer.pk}/").content.decode()


def test_a_volume_needs_a_workload_and_a_bad_path_is_refused_beside_it(alice, offer):
    volume = _ready(alice, offer)
    client = _signed_in(alice)
    alone = _rent(client, offer, **{"workload-volume": volume.pk})
    assert alone.status_code == 400
    assert "A volume is mounted into a workload: choose a template or an image too." in alone.content.decode()
    bad = _rent(
        client, offer, **{"workload-image": "nginx:1", "workload-volume": volume.pk, "workload-volume_path": "/proc/x"}
    )
    assert bad.status_code == 400
    assert re.search(r'id="id_workload-volume_errors" class="field-error">[^<]*not under /proc', bad.content.decode())
    assert not Lease.objects.filter(organization=alice.org).exists()


# --- 简体中文 ---------------------------------------------------------------------------------------------------


def test_the_chinese_page(alice, offer):
    ready = _ready(alice, offer)
    creating = volumes.volume_create(org=alice.org, server=offer.server, name="new-one", size_gb=1)
    response = _signed_in(alice, "zh-hans").get("/volumes/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<h1>存储卷</h1>" in body and "新建存储卷" in body and "每 GB·月价格" in body
    assert _state(body, ready) == "就绪" and _state(body, creating) == "创建中"
    assert "Your volumes" not in body and "Create volume" not in body and "Ready" not in body
    asked = _signed_in(alice, "zh-hans").post(f"/volumes/{ready.pk}/delete/").content.decode()
    assert "删除存储卷 datasets？" in asked
    rent = _signed_in(alice, "zh-hans").get(f"/offers/{offer.pk}/").content.decode()
    assert "挂载路径" in rent


def test_the_services_refusals_are_said_in_chinese(alice, offer):
    _ready(alice, offer, name="big", size_gb=90)
    client = _signed_in(alice, "zh-hans")
    too_big = _create(client, server=offer.server_id, size_gb=11)
    assert too_big.status_code == 409 and "此服务器剩余 10 GB 存储卷空间。" in too_big.content.decode()
    same = _create(client, server=offer.server_id, name="big")
    assert same.status_code == 400 and "您已有同名的存储卷。" in same.content.decode()
    volume = Volume.objects.get(name="big")
    bad_path = _rent(
        client, offer, **{"workload-image": "nginx:1", "workload-volume": volume.pk, "workload-volume_path": "/sys/x"}
    )
    assert bad_path.status_code == 400 and "/sys/x：不能位于 /proc、/sys 或 /dev 之下。" in bad_path.content.decode()


def test_a_volume_is_never_dropped_silently_with_host_access_or_without_an_image(alice, bob):
    server = online_server(organization=bob.org, runtime="host", name="bob-host-box", offer={"host_access": True})
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=100)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.1000")
    offer.save(update_fields=["storage_gb_month_price"])
    volume = _ready(alice, offer)
    key = services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())
    client = _signed_in(alice)
    host = _rent(
        client,
        offer,
        plan="server_month",
        months=1,
        **{
            "workload-access": "host",
            "workload-ssh_keys": [key.pk],
            "workload-volume": volume.pk,
            "workload-volume_path": "/etc/data",
        },
    )
    assert host.status_code == 400
    beside = re.search(r'id="id_workload-volume_errors" class="field-error">([^<]*)<', host.content.decode())
    assert beside and "under /data, /mnt, /srv, /scratch or /workspace" in beside.group(1)
    # card_hour with the host radio still ticked: a container then, and without an image it is refused.
    card = _rent(client, offer, **{"workload-access": "host", "workload-volume": volume.pk})
    assert card.status_code == 400 and "Name a template or an image." in card.content.decode()
    assert not Lease.objects.filter(organization=alice.org).exists()
