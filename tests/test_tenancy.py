"""Every tenant-owned API route, walked as a foreign tenant: 404, no data, nothing changed.

The routes are enumerated from the URL resolver, so a new route with an object id in its path fails
`test_every_object_route_is_covered` until it gets an entry in VICTIM_OBJECTS (tests/support/tenancy.py).
"""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.tenancy import tenant_models
from tests.support import tenancy
from tests.support.tenancy import VICTIM_OBJECTS, Victims, methods_of, snapshot

# Routes with ids that are public by design (e.g. a listed offer); only their writes are walked.
PUBLIC_READS: set[str] = {"offer-detail"}


def _walk(patterns, prefix: str = "", namespace: str | None = None):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            ns = entry.namespace or namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def object_routes() -> list[tuple[str, URLPattern]]:
    routes = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith(("api/v1/", "^api/v1/")) and re.search(r"<(?:\w+:)?\w+>|\(\?P<", route) and pattern.name:
            if "format" in pattern.pattern.regex.groupindex:
                continue  # DRF's ".json" suffix variants
            if pattern.name.startswith("agent-"):
                # An agent's route takes its signature, never a user's credential (401 whatever the id); that one
                # server's agent reaches nothing of another's is tested with the routes (test_volume_moves.py).
                continue
            routes.append((pattern.name, pattern))
    return routes


@pytest.fixture
def victims(alice, bob) -> Victims:
    world = Victims(alice=alice, bob=bob)
    try:
        from tests.factories import ServerFactory
    except ImportError:  # inventory not landed yet
        return world
    world.objects["server"] = ServerFactory(organization=bob.org, name="bob-secret-box-01")
    world.objects["server_name"] = "bob-secret-box-01"
    return world


def test_every_object_route_is_covered():
    names = {name for name, _ in object_routes()}
    missing = sorted(names - set(VICTIM_OBJECTS) - PUBLIC_READS)
    assert not missing, f"add these routes to VICTIM_OBJECTS in {tenancy.__file__}: {missing}"


def test_a_foreign_tenant_gets_404_and_no_data_on_every_object_route(victims, charlie):
    walked = 0
    for name, pattern in object_routes():
        if name not in VICTIM_OBJECTS:
            continue
        try:
            url = reverse(name, kwargs=VICTIM_OBJECTS[name](victims))
        except KeyError:
            continue  # the victim object of a route whose app has not landed
        before = snapshot()
        for method in methods_of(pattern):
            if name in PUBLIC_READS and method == "get":
                continue
            response = getattr(charlie.api, method)(url, {}, format="json")
            assert response.status_code == 404, f"{method.upper()} {url} -> {response.status_code}"
            assert response.json()["error"]["code"] in ("not_found", "organization_not_found")
            body = response.content.decode()
            leaked = [s for s in victims.secrets() if s and s in body]
            assert not leaked, f"{method.upper()} {url} leaked {leaked}"
            walked += 1
        assert snapshot() == before, f"{name}: a foreign request changed data"
    assert walked >= 8


def test_a_foreign_organization_header_never_reaches_its_data(victims, charlie):
    charlie.api.credentials(HTTP_AUTHORIZATION=f"Bearer {charlie.token}", HTTP_X_ORGANIZATION=str(victims.alice.org.pk))
    for name, _pattern in object_routes():
        if name in VICTIM_OBJECTS:
            try:
                url = reverse(name, kwargs=VICTIM_OBJECTS[name](victims))
            except KeyError:
                continue
            assert charlie.api.get(url).status_code == 404


def test_every_tenant_owned_model_declares_how_it_is_scoped():
    labels = {m._meta.label for m in tenant_models()}
    assert {"accounts.Organization", "accounts.Membership", "inventory.Server", "inventory.Gpu"} <= labels
