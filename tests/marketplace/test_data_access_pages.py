"""The volumes page's data access (issue 16): a customer opens a no-GPU session on a server's volumes with one of
their keys, sees it waiting and then its SSH command once the agent runs it, and ends it; in English and 简体中文;
a role that may not operate gets 403, another tenant's session 404."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from tests.conftest import make_persona
from tests.marketplace.test_volume_pages import _public_key, _ready, _signed_in, offer  # noqa: F401 (fixture)
from tests.support.pages import assert_page_keeps_to_the_policy
from workloads import agent_channel, services, volumes
from workloads.models import DataAccess, Workload


def _session_row(body: str, session: DataAccess) -> str:
    match = re.search(rf'<tr data-session="{session.pk}"[^>]*>(.*?)</tr>', body, re.S)
    assert match, f"no row for session {session.pk}"
    return match.group(1)


@pytest.mark.parametrize(
    ("language", "words"),
    [
        ("en", ["Data access without cards", "Open data access", "Waiting for the server", "Running", "Ended"]),
        ("zh-hans", ["无卡数据访问", "开启数据访问", "等待服务器", "运行中", "已结束"]),
    ],
)
def test_open_see_the_ssh_command_and_end(alice, offer, language, words):  # noqa: F811
    volume = _ready(alice, offer)
    key = services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())
    client = _signed_in(alice, language)
    page = client.get("/volumes/")
    assert page.status_code == 200
    body = page.content.decode()
    assert words[0] in body and words[1] in body
    assert f'name="volumes" value="{volume.pk}"' in body and f'name="ssh_keys" value="{key.pk}"' in body
    assert_page_keeps_to_the_policy(page)

    opened = client.post("/volumes/access/", {"server": offer.server_id, "volumes": [volume.pk], "ssh_keys": [key.pk]})
    assert opened.status_code == 303
    session = DataAccess.objects.get()
    body = client.get("/volumes/").content.decode()
    row = _session_row(body, session)
    assert words[2] in row and f"/data/{volume.name}" in row
    assert f'name="volumes" value="{volume.pk}"' not in body  # open in a session: not offered again

    workload = Workload.objects.get(data_access=session)
    agent_channel.reported_states_apply(
        server=offer.server,
        report={"workloads": [{"id": workload.pk, "state": "running", "ports": {"22": 40222}}]},
    )
    row = _session_row(client.get("/volumes/").content.decode(), session)
    assert words[3] in row and "ssh -p 40222 root@" in row

    ended = client.post(f"/volumes/access/{session.pk}/end/")
    assert ended.status_code == 303
    session.refresh_from_db()
    assert session.state == "ended"
    row = _session_row(client.get("/volumes/").content.decode(), session)
    assert words[4] in row and "ssh -p" not in row


def test_a_volume_in_grace_can_be_opened_and_a_refusal_is_said(alice, offer):  # noqa: F811
    volume = _ready(alice, offer)
    key = services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())
    volumes.volumes_hold(org=alice.org, wipe_at=timezone.now() + timedelta(days=10))
    client = _signed_in(alice)
    assert f'name="volumes" value="{volume.pk}"' in client.get("/volumes/").content.decode()
    no_key = client.post("/volumes/access/", {"server": offer.server_id, "volumes": [volume.pk]}, follow=True)
    assert "Choose at least one of your SSH keys." in no_key.content.decode()
    assert not DataAccess.objects.exists()
    client.post("/volumes/access/", {"server": offer.server_id, "volumes": [volume.pk], "ssh_keys": [key.pk]})
    assert DataAccess.objects.get().volumes.get() == volume


def test_a_billing_member_reads_but_may_not_open_or_end_and_another_tenant_gets_404(alice, charlie, offer):  # noqa: F811
    volume = _ready(alice, offer)
    key = services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())
    client = _signed_in(alice)
    client.post("/volumes/access/", {"server": offer.server_id, "volumes": [volume.pk], "ssh_keys": [key.pk]})
    session = DataAccess.objects.get()
    member = make_persona(alice.org, role=Role.BILLING)
    reader = _signed_in(member)
    body = reader.get("/volumes/").content.decode()
    assert f'data-session="{session.pk}"' in body and "Open data access" not in body
    assert reader.post("/volumes/access/", {"server": offer.server_id}).status_code == 403
    assert reader.post(f"/volumes/access/{session.pk}/end/").status_code == 403
    assert _signed_in(charlie).post(f"/volumes/access/{session.pk}/end/").status_code == 404
    assert Client().post(f"/volumes/access/{session.pk}/end/").status_code == 302  # to the login page
    session.refresh_from_db()
    assert session.state == "open"


def test_the_providers_server_page_lists_a_session_as_data_access_without_customer_data(alice, bob, offer):  # noqa: F811
    volume = _ready(alice, offer)
    key = services.ssh_key_add(user=alice.user, name="laptop", public_key=_public_key())
    _signed_in(alice).post(
        "/volumes/access/", {"server": offer.server_id, "volumes": [volume.pk], "ssh_keys": [key.pk]}
    )
    body = _signed_in(bob).get(f"/servers/{offer.server_id}/").content.decode()
    row = re.search(r'<tr data-lease="">(.*?)</tr>', body, re.S)
    assert row and "Data access" in row.group(1) and re.search(r'class="num">0<', row.group(1))
    assert "None" not in row.group(1) and volume.name not in body and key.fingerprint not in body
