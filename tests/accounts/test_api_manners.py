"""The API's manners: every error is the contract's JSON, bad input changes nothing."""

import threading
from datetime import UTC, datetime

import time_machine
from django.test import override_settings

from accounts.models import Organization
from accounts.throttling import hit


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    if code:
        assert error["code"] == code
    return error


def test_malformed_json_is_400(alice):
    response = alice.api.post("/api/v1/orgs/", data="{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


def test_unknown_fields_are_400_and_change_nothing(alice):
    before = Organization.objects.count()
    response = alice.api.post(
        "/api/v1/orgs/", {"name": "X", "kind": "customer", "status": "active", "owner": 1}, format="json"
    )
    error = assert_error(response, 400, "invalid")
    assert set(error["fields"]) == {"status", "owner"}
    assert Organization.objects.count() == before


def test_wrong_types_and_values_are_field_errors(alice):
    for body in (
        {"name": ["x"], "kind": "customer"},
        {"name": "x", "kind": "landlord"},
        {"name": "", "kind": 7},
    ):
        assert_error(alice.api.post("/api/v1/orgs/", body, format="json"), 400, "invalid")
    error = assert_error(alice.api.post("/api/v1/orgs/", [1, 2], format="json"), 400)
    assert error["fields"]


def test_json_that_is_not_an_object_or_has_nan_is_refused(alice):
    response = alice.api.post("/api/v1/orgs/", data='{"name": NaN}', content_type="application/json")
    assert_error(response, 400, "malformed_request")


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_an_oversize_body_is_400_before_parsing(alice):
    response = alice.api.post("/api/v1/orgs/", {"name": "x" * 5000, "kind": "customer"}, format="json")
    assert_error(response, 400, "body_too_large")


def test_unknown_api_paths_and_ids_are_json_404(alice):
    assert_error(alice.api.get("/api/v1/no-such-thing/"), 404, "not_found")
    assert_error(alice.api.get("/api/v1/orgs/999999/"), 404, "not_found")
    assert_error(alice.api.get("/api/v1/orgs/abc/"), 404, "not_found")


def test_a_wrong_method_is_405_json(alice):
    assert_error(alice.api.put("/api/v1/auth/keys/", {}), 405, "method_not_allowed")


def test_an_unsupported_media_type_is_415_json(alice):
    response = alice.api.post("/api/v1/orgs/", data="name=x", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_token_endpoint_is_rate_limited_with_a_json_429(anon, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "auth": "3/60"}
    # Inside one fixed window: a window boundary mid-test would let a fresh three through.
    with time_machine.travel(datetime(2026, 11, 2, 8, 0, 5, tzinfo=UTC), tick=False):
        _five_token_attempts_then_a_json_429(anon)


def _five_token_attempts_then_a_json_429(anon):
    codes = [
        anon.post("/api/v1/auth/token/", {"email": "a@example.com", "password": "x"}, format="json").status_code
        for _ in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]
    response = anon.post("/api/v1/auth/token/", {"email": "a@example.com", "password": "x"}, format="json")
    assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1


def test_a_hundred_concurrent_hits_on_a_ten_per_minute_limit_let_ten_through():
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(100)

    def one() -> None:
        barrier.wait()
        allowed, _ = hit("concurrency-test", "203.0.113.9", "10/60")
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 10
    assert len(results) == 100


def test_schema_and_docs_are_served_offline(anon):
    schema = anon.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/auth/register/" in schema.content
    docs = anon.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content.lower()
    assert b"cdn." not in docs.content.lower()
