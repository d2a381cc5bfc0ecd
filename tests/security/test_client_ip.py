"""Every per-address limit counts by the connection's address, or by what a trusted proxy says: never by an
X-Forwarded-For the client wrote itself (issue 13)."""

from __future__ import annotations

import pytest
from allauth.account.adapter import get_adapter
from django.test import RequestFactory

from accounts.clientip import client_ip, client_key

# Every request of a test in one rate-limit window, however slow the machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_rate_windows")

PASSWORD = "a very good passphrase"


def _request(remote: str = "203.0.113.9", forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_the_forwarded_header_is_ignored(settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_a_forwarded_header_from_an_untrusted_address_is_ignored(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert client_ip(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_behind_trusted_proxies_the_first_untrusted_address_from_the_right_is_the_client(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1"]
    # The client wrote "1.1.1.1, garbage"; the outer proxy appended the client's address, the inner one its own.
    request = _request("10.0.0.5", "1.1.1.1, garbage, 198.51.100.7, 192.0.2.1")
    assert client_ip(request) == "198.51.100.7"
    # Entries that are not addresses are skipped; ports and brackets are understood.
    assert client_ip(_request("10.0.0.5", "198.51.100.8:4711, nonsense")) == "198.51.100.8"
    assert client_ip(_request("10.0.0.5", "[2001:db8::1]:443")) == "2001:db8::1"
    # Only trusted proxies in the header: the farthest one; no header at all: the proxy itself.
    assert client_ip(_request("10.0.0.5", "10.1.1.1, 10.2.2.2")) == "10.1.1.1"
    assert client_ip(_request("10.0.0.5")) == "10.0.0.5"


def test_ipv4_mapped_and_ipv6_clients_share_one_key_per_64(settings):
    settings.TRUSTED_PROXIES = []
    assert client_ip(_request("::ffff:203.0.113.9")) == "203.0.113.9"
    assert client_key(_request("2001:db8:1:2::1")) == client_key(_request("2001:db8:1:2:ffff::9"))
    assert client_key(_request("2001:db8:1:2::1")) != client_key(_request("2001:db8:1:3::1"))


def test_allauth_counts_by_the_same_address(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    request = _request("127.0.0.1", "198.51.100.7")
    assert get_adapter().get_client_ip(request) == "198.51.100.7"
    settings.TRUSTED_PROXIES = []
    assert get_adapter().get_client_ip(request) == "127.0.0.1"


def _rotating(n: int):
    return [f"198.51.100.{i}" for i in range(1, n + 1)]


def test_a_new_forwarded_header_per_request_gets_no_new_token_allowance(anon, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth": "3/60", "auth_account": "100/60"}
    codes = [
        anon.post(
            "/api/v1/auth/token/",
            {"email": f"guess{i}@example.com", "password": "guess"},
            format="json",
            HTTP_X_FORWARDED_FOR=ip,
        ).status_code
        for i, ip in enumerate(_rotating(5))
    ]
    assert codes == [401, 401, 401, 429, 429]


def test_a_new_forwarded_header_per_request_gets_no_new_registration_allowance(anon, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "register": "2/3600"}
    codes = []
    for i, ip in enumerate(_rotating(4)):
        body = {"email": f"new{i}@example.com", "password": PASSWORD, "organization": {"name": "X", "kind": "customer"}}
        codes.append(anon.post("/api/v1/auth/register/", body, format="json", HTTP_X_FORWARDED_FOR=ip).status_code)
    assert codes == [201, 201, 429, 429]


def test_a_new_forwarded_header_per_request_gets_no_new_enrolment_allowance(anon, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "agent_enroll": "2/60"}
    body = {"enrollment_token": "enr_wrong", "hostname": "h", "gpus": [{"index": 0, "uuid": "GPU-x", "name": "x"}]}
    codes = [
        anon.post("/api/v1/agent/enroll/", body, format="json", HTTP_X_FORWARDED_FOR=ip).status_code
        for ip in _rotating(4)
    ]
    assert codes[2:] == [429, 429]


def test_behind_a_trusted_proxy_each_client_has_its_own_allowance_and_cannot_forge_another(anon, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]  # the test client connects from 127.0.0.1: our proxy
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth": "2/60", "auth_account": "100/60"}

    def attempt(forwarded: str) -> int:
        body = {"email": "someone@example.com", "password": "guess"}
        return anon.post("/api/v1/auth/token/", body, format="json", HTTP_X_FORWARDED_FOR=forwarded).status_code

    # One client, writing a new address of its own in front of what the proxy appended each time.
    assert [attempt(f"{ip}, 198.51.100.50") for ip in _rotating(3)] == [401, 401, 429]
    # Another client behind the same proxy still has its allowance.
    assert attempt("198.51.100.51") == 401


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "not-an-address"])
def test_a_bad_trusted_proxy_entry_fails_at_startup(entry, monkeypatch):
    from config.env import env_networks

    monkeypatch.setenv("TRUSTED_PROXIES", f"10.0.0.1,{entry}")
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        env_networks("TRUSTED_PROXIES")


def test_a_clients_own_x_forwarded_proto_does_not_make_plain_http_secure(client, settings):
    """SECURE_PROXY_SSL_HEADER believes X-Forwarded-Proto: only a trusted proxy's is kept."""
    settings.SECURE_SSL_REDIRECT = True
    settings.TRUSTED_PROXIES = []
    response = client.get("/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301 and response["Location"].startswith("https://")
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    assert client.get("/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
