"""Schemathesis against /api/schema/: generated requests to every operation, as an authenticated customer and as a
provider, never get a 5xx, and every response matches the schema (statuses the schema does not describe are
checked for being JSON errors of API.md's shape)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from config.wsgi import application
from tests.factories import online_server

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """Requests go straight to the WSGI app: keep Django from closing the test's connection after each one
    (what Django's own test client does)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(alice, bob):
    """Something to find: bob's listed servers, a lease of alice's."""
    from scheduler import services

    for index in range(2):
        online_server(organization=bob.org, name=f"fuzz-{index}")
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    return {"customer": alice, "provider": bob}


@schema.parametrize()
@hypothesis_settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_every_response_matches_the_schema(case, world):
    # Provider routes as the provider, the rest as the customer (each also sees the other's 403s and 404s).
    provider_paths = ("/api/v1/servers", "/api/v1/offers", "/api/v1/payouts", "/api/v1/agent")
    persona = world["provider" if case.path.startswith(provider_paths) else "customer"]
    response = case.call(headers={"Authorization": f"Bearer {persona.token}", "X-Organization": str(persona.org.pk)})
    case.validate_response(response, checks=[not_a_server_error, content_type_conformance, response_schema_conformance])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
