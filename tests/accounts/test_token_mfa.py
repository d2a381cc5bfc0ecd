"""`POST /api/v1/auth/token/` for an account with two-factor authentication (accounts/two_factor.py): no token for
the password alone; a TOTP code or a recovery code, each good once (the web's own rules, shared with its sign-in);
wrong codes count toward the same per-account limit as wrong passwords; API keys already issued keep working."""

from __future__ import annotations

import time

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from django.test import Client
from django.urls import reverse

from accounts.models import ApiKey
from tests.factories import PASSWORD

TOKEN = "/api/v1/auth/token/"


def totp_now(secret: str, step: int = 0) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + step))


@pytest.fixture
def secret(alice) -> str:
    secret = generate_totp_secret()
    TOTP.activate(alice.user, secret)
    return secret


def ask(anon, **body):
    return anon.post(TOKEN, {"email": "alice@example.com", "password": PASSWORD, **body}, format="json")


def test_the_password_alone_gets_no_token_once_the_account_has_totp(anon, alice, secret):
    keys = ApiKey.objects.count()
    refused = ask(anon)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "mfa_required"
    assert "code" in refused.json()["error"]["message"]
    assert "token" not in refused.json()
    assert ApiKey.objects.count() == keys
    blank = ask(anon, code="  ")
    assert blank.status_code == 401 and blank.json()["error"]["code"] == "mfa_required"


def test_a_good_totp_code_gets_a_token_that_works_and_is_recorded(anon, alice, secret):
    response = ask(anon, code=totp_now(secret), name="laptop")
    assert response.status_code == 200, response.json()
    token = response.json()["token"]
    assert ApiKey.objects.filter(user=alice.user, name="laptop", revoked_at__isnull=True).count() == 1
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert anon.get("/api/v1/orgs/").status_code == 200
    assert alice.user.authenticator_set.get(type="totp").last_used_at is not None


def test_a_code_is_good_once_and_another_steps_code_is_refused(anon, alice, secret):
    code = totp_now(secret)
    assert ask(anon, code=code).status_code == 200
    replay = ask(anon, code=code)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "mfa_code_invalid"
    stale = ask(anon, code=totp_now(secret, -3))  # outside allauth's tolerance, as on the web
    assert stale.status_code == 401 and stale.json()["error"]["code"] == "mfa_code_invalid"


def test_a_code_the_web_sign_in_took_is_refused_by_the_api(anon, alice, secret):
    EmailAddress.objects.create(user=alice.user, email=alice.user.email, primary=True, verified=True)
    web = Client()
    assert web.post(reverse("account_login"), {"login": alice.user.email, "password": PASSWORD}).status_code == 302
    code = totp_now(secret)
    assert web.post(reverse("mfa_authenticate"), {"code": code}).status_code == 302
    replay = ask(anon, code=code)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "mfa_code_invalid"


def test_wrong_codes_count_with_wrong_passwords_toward_the_accounts_limit(anon, alice, secret, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth_account": "3/300", "auth": "100/60"}
    good = totp_now(secret)
    wrong = "000000" if good != "000000" else "111111"
    assert ask(anon, password="not it").status_code == 401
    for _ in range(2):
        response = ask(anon, code=wrong)
        assert response.status_code == 401 and response.json()["error"]["code"] == "mfa_code_invalid"
    limited = ask(anon, code=good)  # the fourth attempt in the window: even the right code waits
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited["Retry-After"]) >= 1


def test_asking_without_a_code_is_not_a_guess(anon, alice, secret, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth_account": "2/300", "auth": "100/60"}
    for _ in range(4):
        assert ask(anon).json()["error"]["code"] == "mfa_required"
    assert ask(anon, code=totp_now(secret)).status_code == 200


def test_the_webs_limit_of_wrong_codes_holds_for_the_api_too(anon, alice, secret, settings):
    # allauth's per-account limit of its two-factor step (5 in 5 minutes) is shared by the web and the API.
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth_account": "100/300", "auth": "100/60"}
    good = totp_now(secret)
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(5):
        assert ask(anon, code=wrong).json()["error"]["code"] == "mfa_code_invalid"
    limited = ask(anon, code=good)
    assert limited.status_code == 429 and "two-factor" in limited.json()["error"]["message"]


def test_a_wrong_password_with_a_good_code_uses_no_code(anon, alice, secret):
    code = totp_now(secret)
    bad = ask(anon, password="not it", code=code)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "authentication_failed"
    assert ask(anon, code=code).status_code == 200  # the code was not spent by the failed attempt


def test_a_recovery_code_gets_a_token_once(anon, alice, secret):
    codes = RecoveryCodes.activate(alice.user).generate_codes()
    assert ask(anon, code=codes[0]).status_code == 200
    again = ask(anon, code=codes[0])
    assert again.status_code == 401 and again.json()["error"]["code"] == "mfa_code_invalid"
    assert codes[0] not in RecoveryCodes(alice.user.authenticator_set.get(type="recovery_codes")).get_unused_codes()
    assert ask(anon, code=codes[1]).status_code == 200


def test_keys_issued_before_totp_keep_working(alice, secret):
    assert alice.api.get("/api/v1/orgs/").status_code == 200
    assert alice.api.post("/api/v1/auth/keys/", {"name": "ci"}, format="json").status_code == 201


def test_an_account_without_two_factor_ignores_a_code(anon, alice):
    assert ask(anon, code="123456").status_code == 200


def test_an_unverified_account_with_totp_still_waits_for_its_email(anon, alice, secret):
    EmailAddress.objects.create(user=alice.user, email=alice.user.email, primary=True, verified=False)
    response = ask(anon, code=totp_now(secret))
    assert response.status_code == 403 and response.json()["error"]["code"] == "email_unverified"


def test_the_schema_documents_the_code(anon):
    schema = anon.get("/api/schema/", {"format": "json"}).json()
    fields = schema["components"]["schemas"]["TokenInputRequest"]["properties"]
    assert fields["code"]["type"] == "string" and "mfa_required" in fields["code"]["description"]
    assert set(schema["components"]["schemas"]["TokenInputRequest"]["required"]) == {"email", "password"}
