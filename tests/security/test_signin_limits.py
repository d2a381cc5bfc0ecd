"""Password guessing on the API is limited per account as well as per client address (issue 13)."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey
from tests.factories import PASSWORD

# Every request of a test in one rate-limit window, however slow the machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_rate_windows")


def _token(client, email: str, password: str, address: str):
    body = {"email": email, "password": password}
    return client.post("/api/v1/auth/token/", body, format="json", REMOTE_ADDR=address)


@pytest.fixture
def limits(settings):
    # The per-client limit out of the way: every attempt below comes from another address anyway.
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth": "1000/60", "auth_account": "5/300"}


def test_five_failures_from_five_addresses_lock_the_account_even_for_the_right_password(anon, alice, limits):
    keys_before = ApiKey.objects.filter(user=alice.user).count()
    for i in range(5):
        assert _token(anon, "alice@example.com", "wrong", f"198.51.100.{i}").status_code == 401
    refused = _token(anon, " ALICE@example.com ", PASSWORD, "198.51.100.99")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert set(refused.json()["error"]) == {"code", "message", "fields"}
    assert 0 < int(refused["Retry-After"]) <= 300
    assert ApiKey.objects.filter(user=alice.user).count() == keys_before


def test_an_unknown_email_is_counted_and_answered_the_same_way(anon, alice, limits):
    answers = {}
    for email in ("alice@example.com", "nobody@example.com"):
        codes = [_token(anon, email, "wrong", f"198.51.100.{i}").status_code for i in range(6)]
        last = _token(anon, email, PASSWORD, "198.51.100.200")
        answers[email] = (codes, last.status_code, last.json()["error"]["code"], last.json()["error"]["message"])
    assert answers["alice@example.com"] == answers["nobody@example.com"]
    assert answers["nobody@example.com"][0] == [401] * 5 + [429]


def test_right_passwords_do_not_use_up_the_failure_allowance(anon, alice, limits):
    for i in range(8):
        assert _token(anon, "alice@example.com", PASSWORD, f"198.51.100.{i}").status_code == 200
    for i in range(4):
        assert _token(anon, "alice@example.com", "wrong", f"198.51.100.{i}").status_code == 401
    assert _token(anon, "alice@example.com", PASSWORD, "198.51.100.50").status_code == 200


def test_one_account_locked_leaves_the_others_alone(anon, alice, bob, limits):
    for i in range(6):
        _token(anon, "alice@example.com", "wrong", f"198.51.100.{i}")
    assert _token(anon, "bob@example.com", PASSWORD, "198.51.100.1").status_code == 200
