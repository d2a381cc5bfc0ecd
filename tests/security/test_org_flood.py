"""Creating organisations is limited per user, and a user has at most a few waiting for approval at once, so
nobody floods the staff's approval queue (issue 13)."""

from __future__ import annotations

import pytest

from accounts.models import Organization


@pytest.fixture
def caps(settings):
    settings.SUANLI_MAX_PENDING_ORGANIZATIONS = 3
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "org_create": "100/3600"}


def _create(persona, kind="provider", name="Flood IDC"):
    return persona.api.post("/api/v1/orgs/", {"name": name, "kind": kind}, format="json")


def test_a_fourth_pending_provider_organisation_is_refused_with_a_clear_409(alice, caps):
    assert [_create(alice).status_code for _ in range(3)] == [201, 201, 201]
    refused = _create(alice, kind="both")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "too_many_pending"
    assert "approval" in refused.json()["error"]["message"]
    assert Organization.objects.filter(memberships__user=alice.user, status="pending").count() == 3
    # Customer organisations need no approval and are not capped; another user is not affected.
    assert _create(alice, kind="customer").status_code == 201


def test_an_approved_one_makes_room(alice, staff, caps):
    ids = [_create(alice).json()["id"] for _ in range(3)]
    assert _create(alice).status_code == 409
    assert staff.api.post(f"/api/v1/orgs/{ids[0]}/approve/").status_code == 200
    assert _create(alice).status_code == 201


def test_organisation_creation_is_rate_limited_per_user(alice, charlie, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "org_create": "2/3600"}
    codes = [_create(alice, kind="customer").status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    refused = _create(alice, kind="customer")
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused["Retry-After"]) > 0
    assert _create(charlie, kind="customer").status_code == 201


def test_the_page_form_has_the_same_cap(client, alice, caps):
    client.force_login(alice.user)
    for _ in range(5):
        client.post("/org/new/", {"name": "Page IDC", "kind": "provider", "currency": "USD", "next": "/dashboard/"})
    assert Organization.objects.filter(name="Page IDC").count() == 3
    response = client.post("/org/new/", {"name": "Page IDC", "kind": "provider", "currency": "USD"}, follow=True)
    assert "approval" in response.content.decode()


def test_the_page_form_has_the_same_rate_limit(client, alice, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "org_create": "2/3600"}
    client.force_login(alice.user)
    for _ in range(4):
        client.post("/org/new/", {"name": "Page Co", "kind": "customer", "currency": "USD"})
    assert Organization.objects.filter(name="Page Co").count() == 2
