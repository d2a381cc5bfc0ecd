"""Schemathesis against /api/schema/: generated requests to every operation, as an authenticated customer and as a
provider, never get a 5xx, and every response matches the schema (statuses the schema does not describe are
checked for being JSON errors of API.md's shape).

The second test sends the same operations with values at the edges of what the platform stores (issue 13): one
integer, string or date-like value of a generated body or query replaced by an integer past PostgreSQL's integer
or bigint, a time at either end of the calendar, a string with NUL, or a number in full-width or Arabic-Indic
digits. The schema's own bounds keep the first test inside them; these are the inputs a client is free to send
anyway. (Lone surrogates cannot be sent by schemathesis at all, whatever its codec: tests/security/test_any_body.py
sends them.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from config.wsgi import application
from tests.factories import online_server

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
# Strings may hold NUL (schemathesis's default, stated: PostgreSQL text cannot store it).
schema.config.generation.update(allow_x00=True)

extremes = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
extremes.config.generation.update(allow_x00=True, modes=["positive"])  # valid requests, then one value pushed out
extremes.config.phases.coverage.enabled = False  # the first test's coverage phase already walks the declared bounds

HUGE_INTS = [2**31, -(2**31) - 1, 2**63, 10**18]
FAR_TEXT = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "0001-01",
    "9999-12",
    str(2**31),
    str(10**18),
    "１２.５０",
    "٣",
    "a\x00b",
]


def _leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, (*path, index))]
    if isinstance(value, int | str) and not isinstance(value, bool):
        return [(path, value)]
    return []


def _replaced(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)  # a dict gains a key it did not have: an absent parameter
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


def _pushed_out(value: Any, absent: tuple[str, ...] = ()) -> st.SearchStrategy:
    """The generated value with one leaf replaced by an extreme: an integer by a huge one (or digits a client may
    send as a string), a string by any of FAR_TEXT or a huge integer. `absent`: optional names the value may also
    be given, with an extreme (a query's parameters: `until` is as worth pushing as the ones generated)."""
    spots = _leaves(value) + [((name,), "") for name in absent if isinstance(value, dict) and name not in value]
    if not spots:
        return st.just(value)

    def extremes_for(spot: tuple[tuple, Any]) -> st.SearchStrategy:
        path, leaf = spot
        if isinstance(leaf, int):
            choices = HUGE_INTS + FAR_TEXT[4:8]
        else:
            choices = FAR_TEXT + HUGE_INTS
        return st.sampled_from(choices).map(lambda new: _replaced(value, path, new))

    return st.sampled_from(spots).flatmap(extremes_for)


# The objects of the running test's `world` (ids), so that paths name real objects of the caller's.
WORLD: dict[str, Any] = {}


@extremes.hook
def map_path_parameters(context, path_parameters):
    """Real ids where the world has one: a value pushed out of range on a path that 404s reaches nothing."""
    segment = context.operation.path.split("/")[3]  # /api/v1/<segment>/{id}/...
    known = WORLD.get(segment, {})
    return {name: known.get(name, value) for name, value in (path_parameters or {}).items()} or path_parameters


@extremes.hook
def flatmap_body(context, body):
    return _pushed_out(body)


@extremes.hook
def flatmap_query(context, query):
    return _pushed_out(query or {}, tuple(parameter.name for parameter in context.operation.query))


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
def world(alice, bob, fake_stripe):
    """Something to find: bob's listed servers, a lease of alice's; and the fake Stripe, so a valid top-up reaches it
    instead of a 503 (not configured)."""
    from accounts.models import ApiKey
    from scheduler import services

    servers = [online_server(organization=bob.org, name=f"fuzz-{index}") for index in range(2)]
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    WORLD.clear()
    WORLD.update(
        {
            "leases": {"id": lease.pk},
            "servers": {"id": servers[0].pk},
            "offers": {"id": servers[0].offers.get().pk},
            "orgs": {"id": alice.org.pk, "member_id": alice.membership.pk},
            "auth": {"id": ApiKey.objects.filter(user=alice.user).first().pk},
        }
    )
    return {"customer": alice, "provider": bob}


def call_as_the_owner(case, world):
    # Provider routes as the provider, staff routes as staff, the rest as the customer (each also sees the
    # others' 403s and 404s).
    provider_paths = ("/api/v1/servers", "/api/v1/offers", "/api/v1/payouts", "/api/v1/agent")
    staff_paths = ("/billing/", "/balance/adjustments/")  # an organisation's terms and adjustments
    if (case.path.startswith("/api/v1/admin") or case.path.endswith(staff_paths)) and "staff" in world:
        persona = world["staff"]
    else:
        persona = world["provider" if case.path.startswith(provider_paths) else "customer"]
    return case.call(headers={"Authorization": f"Bearer {persona.token}", "X-Organization": str(persona.org.pk)})


@schema.parametrize()
@hypothesis_settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_5xx_and_every_response_matches_the_schema(case, world):
    response = call_as_the_owner(case, world)
    case.validate_response(response, checks=[not_a_server_error, content_type_conformance, response_schema_conformance])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body


@extremes.parametrize()
@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_values_at_the_edges_of_what_the_platform_stores_are_never_a_5xx(case, world, staff):
    response = call_as_the_owner(case, {**world, "staff": staff})
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
