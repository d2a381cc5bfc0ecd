"""Account pages: allauth inside our layout, the organisation switcher, API keys and provider approval."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.urls import reverse

from accounts.context import SESSION_KEY
from accounts.models import ApiKey, Organization
from accounts.services import api_key_create
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory


def test_allauth_login_signup_and_password_reset_pages_render_inside_our_layout(client, db):
    for path in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        response = client.get(path)
        assert response.status_code == 200, path
        body = response.content.decode()
        assert "site-nav" in body, path
        assert "vendor/pico/pico.min.css" in body, path


def test_signing_in_through_the_form_then_setting_up_totp_renders_inside_our_layout(client, alice):
    EmailAddress.objects.create(user=alice.user, email=alice.user.email, primary=True, verified=True)
    response = client.post("/accounts/login/", {"login": alice.user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert "site-nav" in client.get("/accounts/2fa/").content.decode()
    # Setting up an authenticator asks for the password again first, on a page of our layout too.
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302
    assert "site-nav" in client.get(response["Location"]).content.decode()
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "site-nav" in body
    assert "svg" in body  # the QR code to scan


def test_two_factor_pages_send_anonymous_visitors_to_login(client, db):
    response = client.get("/accounts/2fa/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_switching_to_an_own_organisation_is_remembered_in_the_session(client, alice):
    other = OrganizationFactory(name="Alice Other")
    MembershipFactory(organization=other, user=alice.user)
    client.force_login(alice.user)
    response = client.post("/org/switch/", {"organization": other.pk, "next": "/dashboard/"})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.session[SESSION_KEY] == other.pk


def test_switching_to_a_foreign_organisation_is_404_and_changes_nothing(client, alice, charlie):
    client.force_login(alice.user)
    response = client.post("/org/switch/", {"organization": charlie.org.pk})
    assert response.status_code == 404
    assert SESSION_KEY not in client.session
    response = client.post("/org/switch/", {"organization": "not-a-number"})
    assert response.status_code == 404


def test_switching_ignores_an_offsite_next_address(client, alice):
    client.force_login(alice.user)
    response = client.post("/org/switch/", {"organization": alice.org.pk, "next": "https://evil.example/"})
    assert response["Location"] == "/dashboard/"


def test_switching_needs_post(client, alice):
    client.force_login(alice.user)
    assert client.get(f"/org/switch/?organization={alice.org.pk}").status_code == 405


def test_staff_approving_a_pending_provider_turns_it_active(client, staff):
    pending = OrganizationFactory(name="Waiting IDC", kind="provider", status="pending")
    client.force_login(staff.user)
    response = client.post(f"/org/{pending.pk}/approve/", follow=True)
    assert response.status_code == 200
    pending.refresh_from_db()
    assert pending.status == Organization.Status.ACTIVE
    assert pending.approved_by == staff.user
    assert "Waiting IDC" in response.content.decode()  # the success message
    # A second press (double submit) changes nothing and does not fail.
    assert client.post(f"/org/{pending.pk}/approve/").status_code == 302
    pending.refresh_from_db()
    assert pending.status == Organization.Status.ACTIVE


def test_a_non_staff_user_cannot_approve_a_provider(client, alice):
    pending = OrganizationFactory(name="Waiting IDC", kind="provider", status="pending")
    client.force_login(alice.user)
    response = client.post(f"/org/{pending.pk}/approve/")
    assert response.status_code in (403, 404)
    pending.refresh_from_db()
    assert pending.status == Organization.Status.PENDING
    assert pending.approved_at is None


def test_approving_needs_a_signed_in_user(client, db):
    pending = OrganizationFactory(kind="provider", status="pending")
    response = client.post(f"/org/{pending.pk}/approve/")
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Organization.Status.PENDING


def test_creating_an_api_key_from_the_dashboard_shows_the_token_once(client, alice):
    client.force_login(alice.user)
    before = ApiKey.objects.filter(user=alice.user).count()
    response = client.post("/org/keys/", {"name": "laptop"}, follow=True)
    assert response.status_code == 200
    key = ApiKey.objects.filter(user=alice.user).latest("id")
    assert ApiKey.objects.filter(user=alice.user).count() == before + 1
    assert key.name == "laptop"
    body = response.content.decode()
    assert f"sl_{key.prefix}_" in body
    # The token is in the one-off message only: the next page view no longer shows it.
    token_start = body.index(f'value="sl_{key.prefix}_') + len('value="')
    token = body[token_start : body.index('"', token_start)]
    assert token not in client.get("/dashboard/").content.decode()


def test_the_created_key_authenticates_against_the_api(client, alice):
    client.force_login(alice.user)
    response = client.post("/org/keys/", {"name": "ci"}, follow=True)
    body = response.content.decode()
    key = ApiKey.objects.filter(user=alice.user).latest("id")
    token_start = body.index(f'value="sl_{key.prefix}_') + len('value="')
    token = body[token_start : body.index('"', token_start)]
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/orgs/").status_code == 200


def test_revoking_an_api_key_from_the_dashboard(client, alice):
    key, _ = api_key_create(user=alice.user, name="old")
    client.force_login(alice.user)
    response = client.post(f"/org/keys/{key.pk}/revoke/", follow=True)
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "Revoked" in response.content.decode()


def test_revoking_another_users_key_is_404_and_changes_nothing(client, alice, charlie):
    key, _ = api_key_create(user=charlie.user, name="charlie's")
    client.force_login(alice.user)
    assert client.post(f"/org/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_creating_an_organisation_from_the_dashboard_makes_a_pending_provider(client, alice):
    client.force_login(alice.user)
    response = client.post("/org/new/", {"name": "Alice Compute", "kind": "provider", "currency": "CNY"})
    assert response.status_code == 302
    org = Organization.objects.get(name="Alice Compute")
    assert org.status == Organization.Status.PENDING
    # A second organisation does not switch by itself (issue 17): alice still acts for hers until she chooses it.
    assert client.session.get(SESSION_KEY, alice.org.pk) == alice.org.pk
    body = client.get("/dashboard/").content.decode()
    assert "Organisation Alice Compute created. You still act for Alice Labs" in body
    client.post("/org/switch/", {"organization": org.pk})
    assert client.session[SESSION_KEY] == org.pk
    assert "Pending approval." in client.get("/dashboard/").content.decode()


def test_a_user_with_no_organisation_acts_for_the_one_they_create(client, db):
    from tests.factories import UserFactory

    user = UserFactory(email="nora@example.com")
    client.force_login(user)
    client.post("/org/new/", {"name": "Nora AI", "kind": "customer", "currency": "USD"})
    org = Organization.objects.get(name="Nora AI")
    assert client.session[SESSION_KEY] == org.pk
    assert "Organisation Nora AI created." in client.get("/dashboard/").content.decode()


def test_signing_up_sends_a_verification_email_and_shows_the_verification_page(client, db, mailoutbox):
    response = client.post(
        "/accounts/signup/",
        {"email": "dora@example.com", "password1": PASSWORD, "password2": PASSWORD},
        follow=True,
    )
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse("account_email_verification_sent")
    assert "site-nav" in response.content.decode()
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["dora@example.com"]
