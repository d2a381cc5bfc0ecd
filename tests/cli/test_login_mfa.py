"""`suanli login` for an account with two-factor authentication, against the live site: the code from `--code`, or
asked for when the API answers mfa_required (the line after the password on standard input); a wrong code is exit
1 with the API's code and nothing is stored."""

from __future__ import annotations

import json
import time

import pytest
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value

from tests.factories import PASSWORD


def totp_now(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


@pytest.fixture
def secret(alice) -> str:
    secret = generate_totp_secret()
    TOTP.activate(alice.user, secret)
    return secret


def _stored_token(suanli) -> str | None:
    path = suanli.home / "config" / "config.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("profiles", {}).get("default", {}).get("token")


def test_login_without_a_code_says_mfa_required_and_stores_nothing(suanli, alice, secret):
    run = suanli("login", "--email", "alice@example.com", "--password-stdin", input=PASSWORD + "\n")
    assert run.code == 1
    assert "mfa_required" in run.err, run.err
    assert _stored_token(suanli) is None


def test_login_with_code_option_keeps_a_working_token(suanli, alice, secret):
    run = suanli.ok(
        "login",
        "--email",
        "alice@example.com",
        "--password-stdin",
        "--code",
        totp_now(secret),
        "--json",
        input=PASSWORD + "\n",
    )
    assert run.json()["organizations"][0]["name"] == "Alice Labs"
    assert _stored_token(suanli).startswith("sl_")
    assert suanli.ok("whoami", "--json").json()["organizations"][0]["name"] == "Alice Labs"


def test_login_asks_for_the_code_when_the_api_wants_one(suanli, alice, secret):
    run = suanli.ok(
        "login", "--email", "alice@example.com", "--password-stdin", input=f"{PASSWORD}\n{totp_now(secret)}\n"
    )
    assert "Two-factor code" in run.err
    assert _stored_token(suanli).startswith("sl_")


def test_login_with_a_recovery_code_and_a_replayed_one(suanli, alice, secret):
    code = RecoveryCodes.activate(alice.user).generate_codes()[0]
    suanli.ok("login", "--email", "alice@example.com", "--password-stdin", "--code", code, input=PASSWORD + "\n")
    again = suanli("login", "--email", "alice@example.com", "--password-stdin", "--code", code, input=PASSWORD + "\n")
    assert again.code == 1 and "mfa_code_invalid" in again.err, again.err


def test_a_wrong_code_is_exit_1_and_nothing_is_stored(suanli, alice, secret):
    wrong = "000000" if totp_now(secret) != "000000" else "111111"
    run = suanli("login", "--email", "alice@example.com", "--password-stdin", "--code", wrong, input=PASSWORD + "\n")
    assert run.code == 1 and "mfa_code_invalid" in run.err, run.err
    assert _stored_token(suanli) is None
