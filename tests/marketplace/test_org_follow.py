"""Two organisations of one user (issue 17: 'Creating a second organisation silently switches to it: the lease
being viewed becomes 404'): the header names the organisation acted for, the dashboard lists the user's
organisations to switch explicitly, and a link to a lease, invoice or server of another of the user's
organisations switches to it with a message instead of a bare 404; another tenant's objects stay 404."""

from __future__ import annotations

import pytest

from accounts.context import SESSION_KEY
from billing.models import Invoice
from scheduler.services import lease_create
from tests.factories import MembershipFactory, OrganizationFactory, online_server


@pytest.fixture
def lab_b(alice):
    """A second customer organisation of alice's."""
    org = OrganizationFactory(name="Alice Lab B", currency="USD")
    MembershipFactory(organization=org, user=alice.user, role="owner")
    return org


@pytest.fixture
def lease_b(lab_b, bob):
    online_server(organization=bob.org, gpus=4, name="bob-follow-01")
    return lease_create(org=lab_b, plan="card_hour", gpu_count=1)


def _act_for(client, org) -> None:
    session = client.session
    session[SESSION_KEY] = org.pk
    session.save()


@pytest.mark.parametrize(
    ("language", "acting", "switched"),
    [("en", "Acting for", "another of your organisations"), ("zh-hans", "当前组织", "您的另一个组织")],
)
def test_a_link_to_a_lease_of_another_own_organisation_switches_to_it_and_says_so(
    client, alice, lab_b, lease_b, language, acting, switched
):
    client.force_login(alice.user)
    _act_for(client, alice.org)
    response = client.get(f"/leases/{lease_b.pk}/", HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 302 and response["Location"] == f"/leases/{lease_b.pk}/"
    assert client.session[SESSION_KEY] == lab_b.pk
    page = client.get(f"/leases/{lease_b.pk}/", HTTP_ACCEPT_LANGUAGE=language)
    body = page.content.decode()
    assert page.status_code == 200 and switched in body and "Alice Lab B" in body
    header = body[body.index('id="org-switch-form"') : body.index("</form>", body.index('id="org-switch-form"'))]
    assert acting in header
    assert f'<option value="{lab_b.pk}" selected>Alice Lab B</option>' in header


def test_invoices_and_servers_of_another_own_organisation_switch_too(client, alice, bob, lab_b):
    MembershipFactory(organization=bob.org, user=alice.user, role="member")
    server = online_server(organization=bob.org, gpus=2, name="bob-follow-02")
    invoice = Invoice.objects.create(
        organization=lab_b, period="2026-01", currency="USD", state="open", number="SL-FOLLOW-1"
    )
    client.force_login(alice.user)
    _act_for(client, alice.org)
    assert client.get(f"/invoices/{invoice.pk}/", follow=True).status_code == 200
    assert client.session[SESSION_KEY] == lab_b.pk
    assert client.get(f"/servers/{server.pk}/", follow=True).status_code == 200
    assert client.session[SESSION_KEY] == bob.org.pk


def test_another_tenants_lease_and_an_unknown_id_stay_404_and_switch_nothing(client, alice, charlie, bob):
    online_server(organization=bob.org, gpus=4, name="bob-follow-03")
    foreign = lease_create(org=charlie.org, plan="card_hour", gpu_count=1)
    client.force_login(alice.user)
    _act_for(client, alice.org)
    for path in (f"/leases/{foreign.pk}/", f"/leases/{foreign.pk}/live/", "/leases/999999999/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Charlie" not in response.content.decode()
        assert client.session[SESSION_KEY] == alice.org.pk


def test_a_form_and_a_pages_own_refresh_never_switch(client, alice, lab_b, lease_b):
    client.force_login(alice.user)
    _act_for(client, alice.org)
    assert client.post(f"/leases/{lease_b.pk}/end/").status_code == 404
    # A lease page of lab B left open while alice switched to her other organisation keeps polling its fragment:
    # that must not switch her back.
    assert client.get(f"/leases/{lease_b.pk}/live/", HTTP_HX_REQUEST="true").status_code == 404
    assert client.session[SESSION_KEY] == alice.org.pk


def test_the_dashboard_lists_the_users_organisations_with_a_switch_each(client, alice, lab_b):
    client.force_login(alice.user)
    _act_for(client, alice.org)
    body = client.get("/dashboard/").content.decode()
    table = body[body.index('id="my-organisations"') : body.index("</table>", body.index('id="my-organisations"'))]
    assert "Alice Labs" in table and "Alice Lab B" in table
    assert f'name="organization" value="{lab_b.pk}"' in table
    assert f'name="organization" value="{alice.org.pk}"' not in table  # the current one is marked, not a button
    leases = client.get("/leases/").content.decode()
    assert "Leases of Alice Labs." in leases
