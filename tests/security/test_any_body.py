"""Property (API.md: Errors): any JSON body, or any body at all, POSTed, PUT or PATCHed to any API route, signed in
or not, is answered 2xx or 4xx, never 5xx, and every 4xx is API.md's error shape. The routes come from the URL
resolver (as in the access matrix: tests/support/routes.py), each with the methods its view takes and its path
filled with ids of real objects, so a body reaches the view and its serializer, not only the router's 404.

The bodies: JSON of any shape (hypothesis' recursive strategy) with huge integers, far dates, NUL, lone surrogates
and non-ASCII digits among its values; nesting thousands of levels deep; bytes that are not JSON or not UTF-8; and
a valid body of the route with one value swapped for one of those, which is what reaches the services and the
database. Agent reports, which are signed over their raw bytes, get the same treatment with a real agent's secret.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from accounts.models import ApiKey
from inventory.models import Offer, Server
from tests.support.routes import routes
from tests.workloads import conftest as workloads_conftest
from tests.workloads.conftest import openssh_public_key, rent_with_workload

box, h100 = workloads_conftest.box, workloads_conftest.h100
_forget_telemetry_partitions = workloads_conftest._forget_telemetry_partitions

FUTURE = (datetime.now(UTC) + timedelta(days=30)).isoformat()
SSH_KEY = openssh_public_key(ed25519.Ed25519PrivateKey.generate(), "fuzz@example.com")

# --- values at the edges of what the platform stores -----------------------------------------------------------

HUGE_INTS = st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**18, 2**200])
ODD_TEXT = st.sampled_from(
    [
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfffy",
        "\ud83d",
        "１２.５０",
        "٣",
        "1_000",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "0001-01",
        "9999-12",
        "NaN",
        "1e999999",
        str(2**31),
        "[" * 100,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    ODD_TEXT,
)
KEYS = st.text(max_size=8) | ODD_TEXT
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8) | ODD_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, (*path, index))]
    return [path]


def _with(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


def pushed(base: dict) -> st.SearchStrategy:
    """A valid body with one value swapped for an odd one (or a JSON value of any shape), or one key added."""
    swap = st.sampled_from(_leaves(base)).flatmap(
        lambda path: st.one_of(HUGE_INTS, ODD_TEXT, JSON).map(lambda new: _with(base, path, new))
    )
    added = st.tuples(KEYS, JSON).map(lambda kv: {**base, kv[0]: kv[1]})
    return st.one_of(swap, swap, added)


def deep(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


RAW = st.one_of(
    st.integers(60, 6000).map(deep),
    st.sampled_from([b"", b"{", b"\xff\xfe", b'{"a": NaN}', b'{"a": 1e99999}', b"1" * 5000, b'"\\ud800"']),
)


def encoded(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()  # lone surrogates as \ud800 escapes


def assert_not_5xx(response, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.content[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), (what, body)


# --- the routes --------------------------------------------------------------------------------------------------


def _methods(pattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions is not None:
        return sorted({method.upper() for method in actions} & {"POST", "PUT", "PATCH"})
    view = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    return [method.upper() for method in ("post", "put", "patch") if view is not None and hasattr(view, method)]


def write_routes() -> list[tuple[str, str, str]]:
    """(route key, path template, method) for every API route and write method its view takes."""
    found = []
    for key, (route, pattern) in sorted(routes().items()):
        if route.startswith("api/"):
            found.extend((key, route, method) for method in _methods(pattern))
    return found


WRITE_ROUTES = write_routes()


def test_the_walk_finds_the_write_routes_and_fills_their_paths():
    keys = {key for key, _, _ in WRITE_ROUTES}
    assert {"lease-list", "lease-resize", "offer-detail", "server-list", "agent-enroll", "auth-token"} <= keys
    ids = {"pk": 7, "wid": 8, "member_id": 9, "move": 10, "n": 0}
    paths = {fill(route, ids) for _, route, _ in WRITE_ROUTES}
    assert {"/api/v1/leases/7/resize/", "/api/v1/leases/7/workloads/8/stop/", "/api/v1/orgs/7/members/9/"} <= paths


def fill(route: str, ids: dict[str, Any]) -> str:
    """`route` with its <conv:name> or (?P<name>...) parameters filled from `ids`."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(ids[m.group(1)]), route)  # a router's regex first
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(ids[m.group(1)]), path)
    return "/" + path.replace("^", "").replace("$", "").replace("\\", "")


@pytest.fixture
def world(alice, bob, staff, box, fake_stripe):
    """Objects for the paths: alice's lease with a workload on bob's box, her key and API key, bob's server; and the
    fake Stripe, so a top-up's valid body reaches it instead of a 503."""
    from workloads.models import Workload

    lease = rent_with_workload(alice, gpu_count=1)
    workload = Workload.objects.filter(lease_id=lease["id"]).first()
    key = alice.api.post("/api/v1/ssh-keys/", {"name": "k", "public_key": SSH_KEY}, format="json").json()
    api_key = ApiKey.objects.filter(user=alice.user).first()
    # Bob's box lends disk for volumes, and alice has one there: bodies reach the volume rules, not just "unknown".
    Server.objects.filter(pk=box.server_id).update(volume_disk_gb=50)
    Offer.objects.filter(pk=box.offer_id).update(storage_gb_month_price=Decimal("0.1"))
    volume = alice.api.post("/api/v1/volumes/", {"name": "v", "server": box.server_id, "size_gb": 5}, format="json")
    objects = {
        "lease": lease["id"],
        "workload": workload.pk,
        "server": box.server_id,
        "offer": box.offer_id,
        "org": alice.org.pk,
        "member": alice.membership.pk,
        "ssh-key": key["id"],
        "api-key": api_key.pk,
        "volume": volume.json()["id"],
    }
    bases = {
        "lease-list": [
            {"plan": "card_hour", "gpu_count": 1},
            {"plan": "server_month", "servers": 1, "end_at": FUTURE},
            {"plan": "pflops_year", "pflops": "0.5", "end_at": FUTURE, "start_at": FUTURE},
            {"plan": "card_hour", "gpu_count": 1, "workload": {"image": "nginx:1", "ports": [80], "env": {"A": "b"}}},
            {
                "plan": "card_hour",
                "gpu_count": 1,
                "workload": {"image": "nginx:1", "volumes": [{"volume": volume.json()["id"], "path": "/data"}]},
            },
        ],
        "volumes": [{"name": "data", "server": box.server_id, "size_gb": 5}],
        "data-access": [{"server": box.server_id, "volumes": [volume.json()["id"]], "ssh_keys": [key["id"]]}],
        "volume-move": [{"server": box.server_id, "consent": True}, {"server": box.server_id, "consent": False}],
        "lease-move": [{"server": box.server_id, "consent": True}],
        "lease-resize": [{"gpu_count": 2}],
        "lease-scaling": [
            {
                "min_gpus": 0,
                "max_gpus": 4,
                "queue_depth_per_gpu": 10,
                "schedule": [{"cron": "* 0-8 * * *", "max_gpus": 0}],
            },
            {"min_gpus": 1, "max_gpus": 2, "target_utilization_pct": 70, "max_price_per_hour": "9.50"},
        ],
        "lease-queue-depth": [{"depth": 12}],
        "offer-list": [
            {"server": box.server_id, "prices": {"card_hour": "2.50"}, "available_until": FUTURE},
            {"backed_by_lease": lease["id"], "prices": {"card_hour": "4.00"}, "interruptible_only": False},
        ],
        "offer-reclaim": [{"gpu_count": 1}],
        "offer-detail": [{"prices": {"card_hour": "3.00"}, "min_gpus": 1}],
        "server-list": [
            {
                "name": "b",
                "region": "cn-east-1",
                "gpu_model": h100_id(box),
                "gpu_count": 1,
                "cpu_cores": 8,
                "ram_gb": 64,
                "disk_gb": 100,
                "port_range_start": 40000,
                "port_range_end": 40999,
            }
        ],
        "server-detail": [{"volume_disk_gb": 40}, {"volume_disk_gb": 1}],  # 1: below alice's volume, 409
        "server-drain": [{"reason": "maintenance"}],
        "ssh-keys": [{"name": "k2", "public_key": SSH_KEY}],
        "api-key-list": [{"name": "ci"}],
        "org-list": [{"name": "New Org", "kind": "customer", "currency": "USD"}],
        "org-members": [{"email": "someone@example.com", "role": "member"}],
        "org-member": [{"role": "admin"}],
        "auth-token": [{"email": "alice@example.com", "password": "wrong password"}],
        "auth-register": [
            {
                "email": "new@example.com",
                "password": "a long passphrase",
                "organization": {"name": "N", "kind": "customer"},
            }
        ],
        "auth-verification": [{"email": "new@example.com"}],
        "auth-verification-confirm": [{"key": "not-a-key"}],
        "agent-enroll": [
            {"enrollment_token": "x" * 20, "hostname": "h", "gpus": [{"index": 0, "uuid": "GPU-1", "name": "n"}]}
        ],
        "agent-workload-logs": [{"logs": [{"id": workload.pk, "text": "hello\n", "captured_at": 1.5e9}]}],
        "payout-pay": [{"bank_reference": "REF-1"}],
        "admin-close-period": [{"period": "2026-01"}, {"period": "2999-12"}],
        "balance-top-ups": [{"amount": "25.00", "currency": "USD"}],
        "spend-limits": [{"monthly_cap": "100.00", "alert_at": [0.5, 0.9]}, {"monthly_cap": None}],
        "org-billing": [
            {"mode": "prepaid", "credit_limit": "100.00", "currency": "USD"},
            {"mode": "postpaid", "credit_limit": None, "currency": "USD"},
        ],
        "org-balance-adjustments": [
            {"amount": "10.00", "currency": "USD", "reference": "BANK-REF-1"},
            {"amount": "-5.00", "currency": "USD", "reason": "goodwill reversed"},
        ],
    }
    personas = {"anon": None, "alice": alice, "bob": bob, "staff": staff}
    return {"objects": objects, "bases": bases, "personas": personas}


def h100_id(box) -> int:
    from inventory.models import Server

    return Server.objects.values_list("gpu_model_id", flat=True).get(pk=box.server_id)


def ids_for(key: str, objects: dict) -> dict[str, Any]:
    kind = next(
        (k for k in ("ssh-key", "api-key", "lease", "server", "offer", "org", "volume") if key.startswith(k)), None
    )
    pk = objects.get(kind, 1)  # invoices and payouts: none exist, an id that is not one is as good
    return {
        "pk": pk,
        "wid": objects["workload"],
        "member_pk": objects["member"],
        "member_id": objects["member"],
        "user_pk": objects["member"],
        "move": 1,  # a volume move's transfer: agents only, so any id is as good
        "n": 0,
    }


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_body_to_any_route_is_never_a_5xx(world, data):
    key, route, method = data.draw(st.sampled_from(WRITE_ROUTES), label="route")
    persona = world["personas"][data.draw(st.sampled_from(sorted(world["personas"])), label="persona")]
    bases = world["bases"].get(key, [])
    strategies = [JSON, RAW] + [pushed(base) for base in bases] * 3
    body = data.draw(st.one_of(strategies), label="body")
    client = persona.api if persona else APIClient()
    path = fill(route, ids_for(key, world["objects"]))
    response = client.generic(method, path, encoded(body), content_type="application/json")
    assert_not_5xx(response, f"{method} {path}")


# --- agent reports ---------------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_signed_agent_report_is_never_a_5xx(box, settings_fixture, data):
    agent = box.agent
    agent.seq += 1
    sample = {"uuid": box.uuids[0], "utilization_pct": 5, "xid_errors": [13], "throttle_reasons": ["hw_slowdown"]}
    base = {
        "seq": agent.seq,
        "sent_at": datetime.now(UTC).isoformat(),
        "gpus": [sample],
        "workloads": [{"id": 1, "state": "running", "ports": {"22": 40022}, "message": "up"}],
        "workloads_version": 1,
    }
    body = data.draw(st.one_of(pushed(base), pushed(base), pushed(base), JSON, RAW), label="report")
    raw = encoded(body)
    response = agent.client.post(
        "/api/v1/agent/reports/", data=raw, content_type="application/json", **agent._signed(raw)
    )
    assert_not_5xx(response, "agent report")


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_signed_workload_output_upload_is_never_a_5xx(box, alice, settings_fixture, data):
    from workloads.models import Workload

    if not Workload.objects.filter(server_id=box.server_id).exists():
        rent_with_workload(alice, gpu_count=1)
    wid = Workload.objects.filter(server_id=box.server_id).values_list("pk", flat=True).first()
    base = {"logs": [{"id": wid, "text": "step 1\nstep 2\n", "truncated": False, "captured_at": 1.7e9}]}
    body = data.draw(st.one_of(pushed(base), pushed(base), pushed(base), JSON, RAW), label="upload")
    raw = encoded(body)
    agent = box.agent
    response = agent.client.post(
        "/api/v1/agent/workload-logs/", data=raw, content_type="application/json", **agent._signed(raw)
    )
    assert_not_5xx(response, "agent workload output")


@pytest.fixture
def settings_fixture(settings):
    """Room for every example under the per-agent report limit."""
    settings.SUANLI_RATE_LIMITS = {
        **settings.SUANLI_RATE_LIMITS,
        "agent_reports": "100000/60",
        "agent_workloads": "100000/60",
    }
    return settings
