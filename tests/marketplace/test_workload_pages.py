"""Workload pages: the account's SSH keys, the rent form's workload, a lease's workload panel (state, how to connect,
Restart and Stop), the provider's server page and the staff fleet's stuck workloads; each for its persona only
(another tenant's lease, workload or key is 404), in English and 简体中文, within the Content-Security-Policy."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from inventory.models import Server
from scheduler.models import Lease, LeaseEvent
from tests.factories import GpuModelFactory, MembershipFactory, online_server
from tests.support.pages import assert_page_keeps_to_the_policy, forms_of
from workloads import agent_channel, services
from workloads.models import SshKey, Template, Workload, WorkloadSpec

HOST = "gpu1.bob.example.com"


def _public_key(comment: str = "alice@laptop") -> str:
    blob = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return f"{blob.decode()} {comment}"


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="workload-h100", name="Workload H100")
    return online_server(organization=bob.org, gpu_model=model, name="bob-wl-box", public_host=HOST).offers.get()


@pytest.fixture
def key(alice) -> SshKey:
    return services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())


@pytest.fixture
def pytorch() -> Template:
    return Template.objects.get(organization=None, slug="pytorch-jupyter")


@pytest.fixture
def lease(alice, offer, key, pytorch) -> Lease:
    workload = {"template": pytorch.pk, "ssh_keys": [key.pk]}
    return services.lease_create(
        org=alice.org, user=alice.user, workload=workload, plan="card_hour", gpu_count=2, offer=offer
    )


def _signed_in(persona, language: str = "") -> Client:
    client = Client()
    client.force_login(persona.user)
    if language:
        client.cookies["django_language"] = language
    return client


def _report(workload: Workload, state: str, **fields) -> None:
    """The server's agent reports `state` of the workload (through the service that applies agent reports)."""
    entry = {"id": workload.pk, "state": state, "ports": {}, "message": "", "progress": None, "exit_code": None}
    agent_channel.reported_states_apply(server=workload.server, report={"workloads": [{**entry, **fields}]})


def _section(body: str, marker: str) -> str:
    return body[body.index(marker) :]


def _panel(body: str) -> str:
    """The lease page's workload panel alone."""
    return body[body.index('id="lease-workloads"') : body.index('<div id="lease-live"')]


# --- SSH keys ---------------------------------------------------------------------------------------------


def test_the_keys_page_adds_a_key_and_lists_it_with_type_bits_and_fingerprint(alice, charlie):
    client = _signed_in(alice)
    page = client.get("/ssh-keys/")
    assert page.status_code == 200 and 'href="/ssh-keys/"' in page.content.decode(), "in the account menu"
    response = client.post("/ssh-keys/", {"name": "", "public_key": _public_key("alice@workstation")})
    assert response.status_code == 302 and response["Location"] == "/ssh-keys/"
    key = SshKey.objects.get(user=alice.user)
    body = client.get("/ssh-keys/").content.decode()
    table = _section(body, 'id="ssh-keys"')
    assert "alice@workstation" in table and "ssh-ed25519" in table and ">256<" in table
    assert key.fingerprint.startswith("SHA256:") and key.fingerprint in table
    assert key.fingerprint not in _signed_in(charlie).get("/ssh-keys/").content.decode()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("ssh-rsa AAAAB3NzaC1yc2E= nonsense", "not a valid key of its type"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "That is a private key"),
        ("", "This field is required."),
    ],
)
def test_a_bad_key_is_refused_beside_the_field_and_adds_nothing(alice, text, error):
    response = _signed_in(alice).post("/ssh-keys/", {"name": "bad", "public_key": text})
    assert response.status_code == 400
    body = response.content.decode()
    beside = re.search(r'<small id="id_public_key_errors" class="field-error">([^<]*)</small>', body)
    assert beside and error in beside.group(1).replace("&#x27;", "'")
    assert 'aria-describedby="id_public_key_errors"' in body
    assert not SshKey.objects.filter(user=alice.user).exists()


def test_a_short_rsa_key_and_a_duplicate_are_refused_in_chinese_too(alice, key):
    weak = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (refused: the point)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    client = _signed_in(alice, "zh-hans")
    short = client.post("/ssh-keys/", {"public_key": weak}).content.decode()
    assert "这个 RSA 密钥只有 1024 位" in short
    again = client.post("/ssh-keys/", {"public_key": key.public_key})
    assert again.status_code == 400 and f"该密钥（{key.fingerprint}）已在您的账户中" in again.content.decode()
    assert SshKey.objects.filter(user=alice.user).count() == 1


def test_removing_a_key_asks_first_and_another_users_key_is_404(alice, charlie, key):
    body = _signed_in(alice).get("/ssh-keys/").content.decode()
    assert f'action="/ssh-keys/{key.pk}/delete/"' in body and "data-confirm=" in body
    assert _signed_in(charlie).post(f"/ssh-keys/{key.pk}/delete/").status_code == 404
    assert SshKey.objects.filter(pk=key.pk).exists()
    response = _signed_in(alice).post(f"/ssh-keys/{key.pk}/delete/")
    assert response.status_code == 302 and not SshKey.objects.filter(pk=key.pk).exists()


def test_adding_a_key_from_the_rent_form_goes_back_to_it(alice, offer):
    client = _signed_in(alice)
    body = client.get(f"/offers/{offer.pk}/").content.decode()
    assert 'id="no-ssh-keys"' in body and f'href="/ssh-keys/?next=/offers/{offer.pk}/"' in body
    page = client.get(f"/ssh-keys/?next=/offers/{offer.pk}/").content.decode()
    assert f'name="next" value="/offers/{offer.pk}/"' in page
    response = client.post("/ssh-keys/", {"public_key": _public_key(), "next": f"/offers/{offer.pk}/"})
    assert response["Location"] == f"/offers/{offer.pk}/"
    elsewhere = client.post("/ssh-keys/", {"public_key": _public_key("b"), "next": "https://evil.example.com/"})
    assert elsewhere["Location"] == "/ssh-keys/"


# --- the rent form ----------------------------------------------------------------------------------------


def test_the_rent_form_offers_the_templates_in_the_pages_language_and_the_users_keys(alice, charlie, offer, key):
    private = services.template_create(org=alice.org, name="Alice Trainer", image="registry.alice.example/train:1")
    Template.objects.filter(pk=private.pk).update(description="Our trainer.", description_zh="我们的训练镜像。")
    services.template_create(org=charlie.org, name="Charlie Secret", image="registry.charlie.example/x:1")
    body = _signed_in(alice).get(f"/offers/{offer.pk}/").content.decode()
    workload = _section(body, 'id="rent-workload"')
    assert "PyTorch" in workload and "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel" in workload
    assert "JupyterLab on port 8888" in workload and "Our trainer." in workload
    assert "Charlie Secret" not in body
    assert f'name="workload-ssh_keys" value="{key.pk}"' in workload and key.fingerprint in workload
    assert 'name="workload-access"' not in body, "no host access on this offer"
    chinese = _signed_in(alice, "zh-hans").get(f"/offers/{offer.pk}/").content.decode()
    assert "8888 端口的 JupyterLab" in chinese and "我们的训练镜像。" in chinese and "Our trainer." not in chinese
    assert "实例（可选）" in chinese or "工作负载" in chinese


def _rent(client: Client, offer, **fields):
    data = {"plan": "card_hour", "gpu_count": 2, "idempotency_key": f"k-{timezone.now().timestamp()}", **fields}
    return client.post(f"/offers/{offer.pk}/", data)


def test_renting_with_a_template_creates_a_lease_with_its_workload(alice, offer, key, pytorch):
    response = _rent(_signed_in(alice), offer, **{"workload-template": pytorch.pk, "workload-ssh_keys": [key.pk]})
    assert response.status_code == 302, response.content.decode()[:2000]
    lease = Lease.objects.get(organization=alice.org)
    assert response["Location"] == f"/leases/{lease.pk}/"
    spec = WorkloadSpec.objects.get(lease=lease)
    assert spec.template == pytorch and spec.image == pytorch.image and spec.access == "container"
    assert [k["fingerprint"] for k in spec.ssh_keys] == [key.fingerprint] and spec.notebook_token
    assert list(Workload.objects.filter(lease=lease).values_list("server_id", flat=True)) == [offer.server_id]


def test_renting_without_a_workload_makes_the_lease_as_before(alice, offer, key):
    response = _rent(_signed_in(alice), offer, **{"workload-ssh_keys": [key.pk]})
    assert response.status_code == 302
    lease = Lease.objects.get(organization=alice.org)
    assert lease.gpu_count == 2 and not WorkloadSpec.objects.filter(lease=lease).exists()


def test_a_bad_image_shows_beside_the_image_field_and_rents_nothing(alice, offer):
    response = _rent(_signed_in(alice), offer, **{"workload-image": "-not/an image"})
    assert response.status_code == 400
    body = response.content.decode()
    beside = re.search(r'<small id="id_workload-image_errors" class="field-error">([^<]*)</small>', body)
    assert beside and "Not a valid image reference." in beside.group(1)
    assert not Lease.objects.filter(organization=alice.org).exists()


def test_a_server_month_may_ask_for_ssh_onto_the_bare_server(alice, bob, key):
    server = online_server(organization=bob.org, runtime="host", public_host=HOST, offer={"host_access": True})
    offer = server.offers.get()
    client = _signed_in(alice)
    body = client.get(f"/offers/{offer.pk}/").content.decode()
    assert 'name="workload-access" value="host"' in body and "SSH onto the bare server" in body
    base = {"plan": "server_month", "months": 1, "workload-access": "host"}
    refused = _rent(client, offer, **base)
    assert refused.status_code == 400 and not Lease.objects.filter(organization=alice.org).exists()
    beside = re.search(r'id="id_workload-ssh_keys_errors" class="field-error">([^<]*)<', refused.content.decode())
    assert beside and "needs at least one SSH key" in beside.group(1)
    response = _rent(client, offer, **base, **{"workload-ssh_keys": [key.pk]})
    assert response.status_code == 302
    spec = WorkloadSpec.objects.get(lease__organization=alice.org)
    assert spec.access == "host" and spec.image == ""


# --- the lease page ---------------------------------------------------------------------------------------


def test_the_panel_shows_the_workload_state_and_polls_while_it_is_on_its_way(alice, lease, pytorch):
    workload = lease.workloads.get()
    client = _signed_in(alice)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    panel = _panel(body)
    assert "Waiting for the server" in panel and pytorch.image in panel and "laptop" in panel
    assert f'hx-get="/leases/{lease.pk}/workloads/"' in panel and 'hx-trigger="every 5s"' in panel
    _report(workload, "pulling", progress=40)
    partial = client.get(f"/leases/{lease.pk}/workloads/").content.decode()
    assert "<html" not in partial and "Pulling the image: 40 %" in partial and 'value="40"' in partial
    _report(workload, "exited", exit_code=3)
    exited = client.get(f"/leases/{lease.pk}/workloads/").content.decode()
    assert "exited with code 3" in exited and "hx-trigger" not in exited
    _report(workload, "running", ports={"22": 40022})
    _report(workload, "failed", message="CUDA error: out of memory")
    failed = client.get(f"/leases/{lease.pk}/workloads/").content.decode()
    assert "The workload failed:" in failed and "CUDA error: out of memory" in failed


def test_a_running_workload_shows_its_ssh_line_the_notebook_link_and_other_ports(alice, lease):
    workload = lease.workloads.get()
    _report(workload, "running", ports={"22": 40022, "8888": 40888, "9000": 40900})
    body = _signed_in(alice).get(f"/leases/{lease.pk}/").content.decode()
    panel = _panel(body)
    code = re.search(r'<code id="(ssh-[\d-]+)" class="ssh-command">([^<]+)</code>', panel)
    assert code and code.group(2) == f"ssh -p 40022 root@{HOST}"
    assert f'data-copy-target="{code.group(1)}"' in panel
    token = lease.workload_spec.notebook_token
    assert f'href="http://{HOST}:40888/lab?token={token}"' in panel and "Notebook (JupyterLab)" in panel
    assert f"{HOST}:40900" in panel and "hx-trigger" not in panel
    assert 'data-action="restart"' in panel and 'data-action="stop"' in panel and "data-confirm=" in panel


def test_restart_and_stop_change_the_workload_once_per_rendered_form(alice, lease):
    workload = lease.workloads.get()
    _report(workload, "running", ports={"22": 40022})
    client = _signed_in(alice)
    url = f"/leases/{lease.pk}/workloads/{workload.pk}"
    response = client.post(f"{url}/restart/", {"idempotency_key": "restart-1"})
    assert response.status_code == 302 and response["Location"].startswith(f"/leases/{lease.pk}/")
    client.post(f"{url}/restart/", {"idempotency_key": "restart-1"})  # a double click
    workload.refresh_from_db()
    assert workload.generation == 1 and workload.desired == "running"
    client.post(f"{url}/stop/", {"idempotency_key": "stop-1"})
    workload.refresh_from_db()
    assert workload.desired == "stopped"
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert "stop asked for" in body and 'data-action="stop"' not in body and 'hx-trigger="every 5s"' in body
    events = _section(body, 'id="lease-events"')
    assert "Restart asked for." in events and "Stop asked for." in events and "Server" in events


def test_another_tenants_lease_and_workload_are_404_and_a_billing_member_cannot_act(alice, charlie, offer, lease):
    workload = lease.workloads.get()
    theirs = services.lease_create(org=charlie.org, user=charlie.user, plan="card_hour", gpu_count=1, offer=offer)
    stranger = _signed_in(charlie)
    for path in (f"/leases/{lease.pk}/", f"/leases/{lease.pk}/workloads/"):
        assert stranger.get(path).status_code == 404
    for verb in ("restart", "stop"):
        assert stranger.post(f"/leases/{lease.pk}/workloads/{workload.pk}/{verb}/").status_code == 404
        # A workload id under another lease's address is unknown there too.
        assert stranger.post(f"/leases/{theirs.pk}/workloads/{workload.pk}/{verb}/").status_code == 404
    member = MembershipFactory(organization=alice.org, role=Role.BILLING).user
    client = Client()
    client.force_login(member)
    body = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'id="lease-workloads"' in body and 'data-action="restart"' not in body
    assert client.post(f"/leases/{lease.pk}/workloads/{workload.pk}/restart/").status_code == 403
    workload.refresh_from_db()
    assert workload.generation == 0 and workload.desired == "running"


def test_a_lease_without_a_workload_has_no_panel(alice, offer):
    plain = services.lease_create(org=alice.org, user=alice.user, plan="card_hour", gpu_count=1, offer=offer)
    body = _signed_in(alice).get(f"/leases/{plain.pk}/").content.decode()
    assert '<div id="lease-workloads" hidden></div>' in body and 'id="workloads-title"' not in body


def test_a_lease_whose_workload_failed_to_start_is_labelled_so_in_both_languages(alice, lease):
    _report(lease.workloads.get(), "failed", message="pull access denied")
    lease.refresh_from_db()
    assert lease.state == "failed"
    body = _signed_in(alice).get(f"/leases/{lease.pk}/").content.decode()
    assert re.search(r'id="lease-state">Failed to start<', body)
    events = _section(body, 'id="lease-events"')
    assert "Failed to start" in events and "pull access denied" in events and "nothing is charged" in events
    assert 'data-action="restart"' not in body
    assert "Failed to start" in _signed_in(alice).get("/leases/").content.decode()
    chinese = _signed_in(alice, "zh-hans").get(f"/leases/{lease.pk}/").content.decode()
    assert re.search(r'id="lease-state">未能启动<', chinese) and "实例" in chinese
    kinds = set(lease.events.values_list("kind", flat=True))
    assert {LeaseEvent.Kind.FAILED, LeaseEvent.Kind.WORKLOAD} <= kinds


def test_the_panel_speaks_chinese(alice, lease):
    _report(lease.workloads.get(), "running", ports={"22": 40022})
    body = _signed_in(alice, "zh-hans").get(f"/leases/{lease.pk}/").content.decode()
    panel = _panel(body)
    for words in ("连接方式", "运行中", "重启", "停止", "复制", "镜像", "密钥"):
        assert words in panel, words


# --- the provider's server page and the register form ------------------------------------------------------


def test_the_server_page_lists_its_workloads_without_customer_data(alice, bob, charlie, offer, lease):
    workload = lease.workloads.get()
    _report(workload, "running", ports={"22": 40022, "8888": 40888})
    body = _signed_in(bob).get(f"/servers/{offer.server_id}/").content.decode()
    table = _section(body, 'id="server-workloads"')
    row = re.search(rf'<tr data-lease="{lease.pk}">(.*?)</tr>', table, re.S)
    assert row and re.search(r'class="num">2<', row.group(1)) and "Running" in row.group(1)
    runtime = _section(body, 'id="server-runtime"')
    assert "Containers (Docker)" in runtime and HOST in runtime and "40000–40999" in runtime
    spec = lease.workload_spec
    for private in (spec.image, spec.notebook_token, spec.ssh_keys[0]["fingerprint"], "40022", "laptop", "Alice"):
        assert private not in body, private
    assert _signed_in(charlie).get(f"/servers/{offer.server_id}/").status_code == 404


def _register(**fields) -> dict:
    return {
        "name": "gpu-node-09",
        "region": "cn-east-1",
        "gpu_model": GpuModelFactory(slug="register-h100").pk,
        "gpu_count": 8,
        "cpu_cores": 128,
        "ram_gb": 2048,
        "disk_gb": 30000,
        "runtime": "host",
        "public_host": "node9.bob.example.com",
        "port_range_start": 41000,
        "port_range_end": 41099,
        **fields,
    }


def test_registering_a_server_takes_its_runtime_public_host_and_port_range(bob):
    client = _signed_in(bob)
    form = client.get("/servers/").content.decode()
    assert 'name="runtime"' in form and 'name="public_host"' in form and 'value="40000"' in form
    wrong = client.post("/servers/", _register(port_range_end=40000, public_host="not a host!"))
    assert wrong.status_code == 400 and not Server.objects.filter(name="gpu-node-09").exists()
    body = wrong.content.decode()
    assert re.search(r'id="id_port_range_end_errors" class="field-error">Must not be below the first port', body)
    assert 'id="id_public_host_errors"' in body
    response = client.post("/servers/", _register())
    assert response.status_code == 302
    server = Server.objects.get(name="gpu-node-09")
    assert (server.runtime, server.public_host, server.port_range_start, server.port_range_end) == (
        "host",
        "node9.bob.example.com",
        41000,
        41099,
    )


# --- staff ------------------------------------------------------------------------------------------------


def test_staff_see_the_stuck_workloads_on_the_fleet_page(alice, staff, lease, offer):
    workload = lease.workloads.get()
    Workload.objects.filter(pk=workload.pk).update(
        state="pulling", state_changed_at=timezone.now() - timedelta(hours=2)
    )
    body = _signed_in(staff).get("/staff/fleet/").content.decode()
    stuck = _section(body, 'id="stuck-workloads"')
    row = re.search(rf'<tr data-workload="{workload.pk}">(.*?)</tr>', stuck, re.S)
    assert row and "bob-wl-box" in row.group(1) and "Bob IDC" in row.group(1)
    assert f">{lease.pk}</a>" in row.group(1) and "Pulling the image" in row.group(1)
    assert _signed_in(alice).get("/staff/fleet/").status_code == 403


# --- the policy and the CSRF token on the new pages ---------------------------------------------------------


def test_the_workload_pages_keep_to_the_csp_and_every_post_form_carries_the_csrf_token(
    alice, bob, staff, offer, key, lease
):
    _report(lease.workloads.get(), "running", ports={"22": 40022, "8888": 40888})
    pages = [
        (alice, "/ssh-keys/"),
        (alice, f"/offers/{offer.pk}/"),
        (alice, f"/leases/{lease.pk}/"),
        (alice, f"/leases/{lease.pk}/workloads/"),
        (bob, f"/servers/{offer.server_id}/"),
        (bob, "/servers/"),
        (staff, "/staff/fleet/"),
    ]
    for persona, path in pages:
        response = _signed_in(persona).get(path)
        assert response.status_code == 200, path
        assert_page_keeps_to_the_policy(response)
        missing = [f for f in forms_of(response.content.decode()) if f["method"] == "post" and not f["token"]]
        assert not missing, (path, missing)
