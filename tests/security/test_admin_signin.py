"""Staff sign in to the admin through allauth, so its rate limits and its two-factor step hold for them too; Django's
admin login form, which had neither, signs nobody in (issue 13)."""

from __future__ import annotations

import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.urls import reverse

from tests.factories import PASSWORD


@pytest.fixture
def staff_user(staff):
    EmailAddress.objects.create(user=staff.user, email=staff.user.email, primary=True, verified=True)
    return staff.user


def _signed_in(client: Client) -> bool:
    return SESSION_KEY in client.session


def test_the_admin_login_form_is_allauths_and_signs_nobody_in_by_itself(client, staff_user):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    response = client.post("/admin/login/?next=/admin/", {"username": staff_user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert not _signed_in(client)


def test_six_wrong_admin_passwords_then_the_right_one_gets_no_staff_session(client, staff_user):
    for _ in range(6):
        client.post("/admin/login/?next=/admin/", {"username": staff_user.email, "password": "wrong"})
    client.post("/admin/login/?next=/admin/", {"username": staff_user.email, "password": PASSWORD})
    assert not _signed_in(client)
    assert client.get("/admin/").status_code == 302
    # Where /admin/login/ sends staff, allauth's per-account limit holds: 5 failures, then the right one refused.
    login = reverse("account_login")
    for _ in range(6):
        client.post(login, {"login": staff_user.email, "password": "wrong"})
    response = client.post(login, {"login": staff_user.email, "password": PASSWORD})
    assert not _signed_in(client)
    assert response.status_code in (200, 429)
    assert client.get("/admin/").status_code == 302


def test_staff_sign_in_reaches_the_admin_through_allauth(client, staff_user):
    response = client.post(
        reverse("account_login") + "?next=/admin/", {"login": staff_user.email, "password": PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_a_staff_user_with_totp_must_pass_the_second_factor_for_the_admin(client, staff_user):
    secret = generate_totp_secret()
    TOTP.activate(staff_user, secret)
    response = client.post(
        reverse("account_login") + "?next=/admin/", {"login": staff_user.email, "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_authenticate"))
    assert not _signed_in(client)
    assert client.get("/admin/").status_code == 302
    assert not _signed_in(client)

    wrong = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert wrong.status_code == 200 and not _signed_in(client)
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    response = client.post(reverse("mfa_authenticate"), {"code": code})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert _signed_in(client)
    assert client.get("/admin/").status_code == 200


def test_a_signed_in_customer_is_refused_the_admin(client, alice):
    client.force_login(alice.user)
    assert client.get("/admin/login/").status_code == 403
    assert client.get("/admin/").status_code == 302
