"""Every tenant-owned API route, walked as a foreign tenant: 404, no data, nothing changed.

The routes are enumerated from the URL resolver, so a new route with an object id in its path fails
`test_every_object_route_is_covered` until it gets an entry in VICTIM_OBJECTS below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import ApiKey, User
from accounts.tenancy import tenant_models
from tests.conftest import Persona


@dataclass
class Victims:
    alice: Persona
    bob: Persona
    objects: dict[str, Any] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Strings that must never appear in a foreign tenant's response."""
        values = [self.alice.user.email, self.alice.org.name, self.bob.user.email, self.bob.org.name]
        values += [str(v) for v in self.objects.values() if isinstance(v, str)]
        return values


def _alice_org(v: Victims) -> dict:
    return {"pk": v.alice.org.pk}


def _bob_server(v: Victims) -> dict:
    return {"pk": v.objects["server"].pk}


def _bob_offer(v: Victims) -> dict:
    if "offer" not in v.objects:
        from tests.factories import OfferFactory

        v.objects["offer"] = OfferFactory(server=v.objects["server"])
    return {"pk": v.objects["offer"].pk}


def _alice_lease(v: Victims) -> dict:
    if "lease" not in v.objects:
        from tests.factories import LeaseFactory

        v.objects["lease"] = LeaseFactory(organization=v.alice.org)
    return {"pk": v.objects["lease"].pk}


def _bob_statement(v: Victims) -> dict:
    if "statement" not in v.objects:
        from billing.models import ProviderStatement

        v.objects["statement"] = ProviderStatement.objects.create(
            organization=v.bob.org, period="2026-03", currency="USD", gross=100, take_rate="0.15", commission=15, net=85
        )
    return {"pk": v.objects["statement"].pk}


def _alice_invoice(v: Victims) -> dict:
    if "invoice" not in v.objects:
        from billing.models import Invoice

        v.objects["invoice"] = Invoice.objects.create(
            organization=v.alice.org,
            period="2026-03",
            currency="USD",
            number="INV-900001",
            state="open",
            subtotal=10,
            total=10,
        )
    return {"pk": v.objects["invoice"].pk}


def _alice_workload(v: Victims) -> dict:
    if "workload" not in v.objects:
        from django.utils import timezone

        from workloads.models import Workload

        lease = _alice_lease(v)["pk"]
        v.objects["workload"] = Workload.objects.create(
            lease_id=lease, server=v.objects["server"], created_at=timezone.now()
        )
    return {"pk": v.objects["workload"].lease_id, "wid": v.objects["workload"].pk}


def _alice_ssh_key(v: Victims) -> dict:
    if "ssh_key" not in v.objects:
        from workloads.models import SshKey

        v.objects["ssh_key"] = SshKey.objects.create(
            user=v.alice.user,
            name="alice-laptop",
            public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice-laptop",
            key_type="ssh-ed25519",
            bits=256,
            fingerprint="SHA256:alice-laptop",
        )
    return {"pk": v.objects["ssh_key"].pk}


# URL name -> the kwargs that point at a victim's object.
VICTIM_OBJECTS: dict[str, Callable[[Victims], dict]] = {
    "org-detail": _alice_org,
    "org-approve": _alice_org,
    "org-members": _alice_org,
    "org-member": lambda v: {"pk": v.alice.org.pk, "member_id": v.alice.membership.pk},
    "api-key-detail": lambda v: {"pk": ApiKey.objects.filter(user=v.alice.user).first().pk},
    "server-detail": _bob_server,
    "server-drain": _bob_server,
    "server-undrain": _bob_server,
    "server-enrollment-token": _bob_server,
    "server-telemetry": _bob_server,
    "offer-detail": _bob_offer,
    "lease-detail": _alice_lease,
    "lease-end": _alice_lease,
    "lease-resize": _alice_lease,
    "lease-events": _alice_lease,
    "payout-detail": _bob_statement,
    "payout-pay": _bob_statement,
    "lease-telemetry": _alice_lease,
    "lease-usage": _alice_lease,
    "lease-workload-restart": _alice_workload,
    "lease-workload-stop": _alice_workload,
    "ssh-key-detail": _alice_ssh_key,
    "invoice-detail": _alice_invoice,
    "invoice-pay": _alice_invoice,
}

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
            routes.append((pattern.name, pattern))
    return routes


def methods_of(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return [method for method in actions if method in ("get", "post", "put", "patch", "delete")]
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return [m for m in ("get", "post", "put", "patch", "delete") if view_class and hasattr(view_class, m)]


# Bookkeeping of the attacker's own credential, not data.
_VOLATILE = {"last_used_at", "last_login"}


def snapshot() -> dict[str, list[dict]]:
    models = [*tenant_models(), ApiKey, User]
    return {
        m._meta.label: [
            {k: v for k, v in row.items() if k not in _VOLATILE} for row in m._default_manager.order_by("pk").values()
        ]
        for m in models
    }


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
    assert not missing, f"add these routes to VICTIM_OBJECTS in {__file__}: {missing}"


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
