"""Every route of the URL conf, walked from the resolver, and the access matrix's world: alice's and bob's objects
(bob's server enrolled by a real agent) that each route's URL points at. A plugin (tests/conftest.py loads it):
`matrix_world` is a fixture for every test."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import ApiKey
from tests.support.tenancy import VICTIM_OBJECTS, Victims

SKIP_PREFIXES = ("admin/", "accounts/", "i18n/", "static/", "media/", "__debug__/")
H100 = "NVIDIA H100 80GB HBM3"
BOB_GPUS = [f"GPU-b0b{i:05d}-0000-4000-8000-000000000000" for i in range(2)]
SERVER_NAME = "bob-secret-box-01"


def _walk_ns(patterns, prefix: str = "", namespace: str | None = None):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk_ns(entry.url_patterns, prefix + str(entry.pattern), entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry, namespace


def routes() -> dict[str, tuple[str, URLPattern]]:
    """Route key ("namespace:name", the name, or the path of an unnamed route) -> (path, pattern)."""
    found = {}
    for route, pattern, namespace in _walk_ns(get_resolver().url_patterns):
        if route.startswith(SKIP_PREFIXES) or "format" in pattern.pattern.regex.groupindex:
            continue
        key = (f"{namespace}:{pattern.name}" if namespace else pattern.name) if pattern.name else route
        found[key] = (route, pattern)
    return found


ROUTES = routes()


@pytest.fixture
def matrix_world(alice, bob, charlie, staff) -> dict[str, Any]:
    """The victims (alice, bob and bob's server, enrolled with two cards), the foreign tenant charlie, staff, the
    agent's credentials and the members made on the way (`members`, empty at first)."""
    from inventory.ingest import agent_enroll
    from inventory.services import server_enrollment_token_issue, server_register
    from tests.factories import GpuModelFactory

    model = GpuModelFactory(slug="matrix-h100", name="Matrix H100", nvml_names=[H100])
    server, _ = server_register(
        org=bob.org,
        name=SERVER_NAME,
        region="cn-east-1",
        gpu_model=model,
        gpu_count=2,
        cpu_cores=64,
        ram_gb=1024,
        disk_gb=8000,
    )
    server, token = server_enrollment_token_issue(server=server)
    gpus = [{"index": i, "uuid": u, "name": H100} for i, u in enumerate(BOB_GPUS)]
    server, agent_secret = agent_enroll(enrollment_token=token, hostname="bob-host", gpus=gpus)
    victims = Victims(alice=alice, bob=bob)
    victims.objects["server"] = server
    return {
        "victims": victims,
        "charlie": charlie,
        "staff": staff,
        "agent": (str(server.agent_id), agent_secret),
        "members": {},
    }


def _alice_key(v: Victims) -> int:
    return ApiKey.objects.filter(user=v.alice.user).first().pk


# Page kwargs -> the victim's object.
PAGE_OBJECTS = {
    "invoice_id": lambda v: VICTIM_OBJECTS["invoice-detail"](v)["pk"],
    "offer_id": lambda v: VICTIM_OBJECTS["offer-detail"](v)["pk"],
    "lease_id": lambda v: VICTIM_OBJECTS["lease-detail"](v)["pk"],
    "server_id": lambda v: v.objects["server"].pk,
    "org_id": lambda v: v.alice.org.pk,
    "key_id": _alice_key,
    "volume_id": lambda v: VICTIM_OBJECTS["volume-detail"](v)["pk"],
    "session_id": lambda v: VICTIM_OBJECTS["data-access-detail"](v)["pk"],
    # Restart and Stop are POST only: GET is 405 whatever the id, and a POST without the CSRF token is 403 first.
    "workload_id": lambda v: 1,
}
BOB_WORDS = ("server", "offer", "payout", "provider", "agent", "staff_fleet")


def owner_of(key: str) -> str:
    """Whose data a route shows: bob (provider side) or alice (customer side)."""
    return "bob" if any(w in key for w in BOB_WORDS) else "alice"


def url_for(key: str, route: str, pattern: URLPattern, v: Victims) -> str:
    name = key if pattern.name else None
    if name is None:
        return "/" + route
    groups = list(pattern.pattern.regex.groupindex)
    if not groups:
        return reverse(name)
    if route.startswith("api/v1/"):
        return reverse(name, kwargs=VICTIM_OBJECTS[pattern.name](v))
    return reverse(name, kwargs={g: PAGE_OBJECTS[g](v) for g in groups})
