"""One e-mail verification rule for the web sign-up and the API's (issue 17: 'Web sign-up needs e-mail
verification but POST /api/v1/auth/register/ hands out a working token without it'), accounts/verification.py:
until its address is verified an account can do nothing; the web sign-in waits for the link and the API answers
its tokens 403 email_unverified; the token registration gave works once the link is followed, whether it is
followed in a browser or its key is posted to the API; a new link can be asked for without saying who has an
account. The setting decides for both."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress

from accounts.models import User

PASSWORD = "a very good passphrase"
LINK = re.compile(r"https?://[^/\s]+/accounts/confirm-email/([^/\s]+)/")


def _register(client, email="dora@example.com", kind="customer"):
    body = {"email": email, "password": PASSWORD, "organization": {"name": "Dora AI", "kind": kind}}
    return client.post("/api/v1/auth/register/", body, format="json")


def _key_from(mailoutbox) -> str:
    match = LINK.search(mailoutbox[-1].body)
    assert match, mailoutbox[-1].body
    return match.group(1)


def test_an_api_registration_gets_a_token_that_answers_email_unverified_until_the_link_is_followed(
    anon, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        answer = _register(anon)
    assert answer.status_code == 201
    body = answer.json()
    assert body["email_verified"] is False and "403 email_unverified" in body["verification"]
    assert mailoutbox and mailoutbox[-1].to == ["dora@example.com"]
    key = _key_from(mailoutbox)

    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    for method, path in [("get", "/api/v1/orgs/"), ("get", "/api/v1/leases/"), ("post", "/api/v1/servers/")]:
        refused = getattr(anon, method)(path, {}, format="json")
        assert refused.status_code == 403, (path, refused.content)
        assert refused.json()["error"]["code"] == "email_unverified"

    # The key of the link, posted to the API (no browser needed); a wrong one is a 400.
    anon.credentials()
    bad = anon.post("/api/v1/auth/verification/confirm/", {"key": "nonsense"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "verification_invalid"
    confirmed = anon.post("/api/v1/auth/verification/confirm/", {"key": key}, format="json")
    assert confirmed.status_code == 200 and confirmed.json() == {"email_verified": True}
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert [o["name"] for o in anon.get("/api/v1/orgs/").json()["results"]] == ["Dora AI"]


def test_a_token_for_an_unverified_account_is_refused_and_given_once_it_is_verified_in_the_browser(
    anon, client, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _register(anon, email="erin@example.com")
    credentials = {"email": "erin@example.com", "password": PASSWORD}
    refused = anon.post("/api/v1/auth/token/", credentials, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_unverified"
    # The web sign-in waits for the link too (the same rule).
    login = client.post("/accounts/login/", {"login": "erin@example.com", "password": PASSWORD})
    assert login.status_code == 302 and login["Location"] == "/accounts/confirm-email/"

    key = _key_from(mailoutbox)
    page = client.get(f"/accounts/confirm-email/{key}/")
    assert page.status_code == 200
    client.post(f"/accounts/confirm-email/{key}/")
    assert EmailAddress.objects.get(email="erin@example.com").verified
    token = anon.post("/api/v1/auth/token/", credentials, format="json")
    assert token.status_code == 200 and token.json()["token"].startswith("sl_")


def test_a_web_signup_is_held_by_the_same_rule_in_the_api(client, anon, mailoutbox):
    client.post("/accounts/signup/", {"email": "finn@example.com", "password1": PASSWORD, "password2": PASSWORD})
    user = User.objects.get(email="finn@example.com")
    from accounts.services import api_key_create

    token = api_key_create(user=user, name="made before verifying")[1]
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert anon.get("/api/v1/auth/keys/").json()["error"]["code"] == "email_unverified"
    EmailAddress.objects.filter(user=user).update(verified=True)
    assert anon.get("/api/v1/auth/keys/").status_code == 200


def test_a_new_link_can_be_asked_for_and_the_answer_says_nothing_about_who_has_an_account(
    anon, alice, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _register(anon, email="gus@example.com")
    sent = len(mailoutbox)
    answers = {}
    for email in ("gus@example.com", "nobody@example.com", "alice@example.com"):
        response = anon.post("/api/v1/auth/verification/", {"email": email}, format="json")
        answers[email] = (response.status_code, response.json())
    assert len(set(map(str, answers.values()))) == 1 and answers["nobody@example.com"][0] == 202
    assert len(mailoutbox) == sent + 1 and mailoutbox[-1].to == ["gus@example.com"]  # only the waiting account
    assert LINK.search(mailoutbox[-1].body)


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_signup_page_says_the_rule(client, db, language):
    body = client.get("/accounts/signup/", HTTP_ACCEPT_LANGUAGE=language).content.decode()
    rule = body[body.index('id="verification-rule"') :]
    assert "email_unverified" in rule and "/api/v1/auth/verification/" in rule
    assert ("Until you follow it" in rule) if language == "en" else ("在您打开该链接之前" in rule)


def test_with_verification_optional_nobody_waits(anon, settings):
    settings.ACCOUNT_EMAIL_VERIFICATION = "optional"
    body = _register(anon, email="hal@example.com").json()
    assert body["email_verified"] is True and body["verification"] == ""
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert anon.get("/api/v1/orgs/").status_code == 200


def test_accounts_without_an_address_on_file_are_not_held(alice):
    # Made by staff or a factory, not signed up: no EmailAddress row (the personas of the suite).
    assert not EmailAddress.objects.filter(user=alice.user).exists()
    assert alice.api.get("/api/v1/orgs/").status_code == 200
