"""The access layer: one id parser, per-entity lookups that fail closed, related fields that accept only what the
actor may use, and tenant-owned querysets that refuse to run unscoped while a request is handled."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory

from accounts.access import Actor, parse_id
from accounts.errors import NotFound
from accounts.tenancy import TenantGuardMiddleware, UnscopedQuery, platform_work
from inventory.access import access_server
from scheduler.access import access_lease
from scheduler.models import Lease
from tests.factories import online_server


@pytest.mark.parametrize(
    "value", ["0", "-1", "１２", "1e3", " 7", "7 ", "", None, True, 2**63, str(2**63), "9" * 40, 1.0]
)
def test_one_id_parser_refuses_what_is_not_a_plain_positive_bigint(value):
    with pytest.raises(NotFound) as caught:
        parse_id(value, "lease")
    assert caught.value.message == "Unknown lease."


def test_the_id_parser_takes_ascii_digits_up_to_bigint():
    assert parse_id("42", "lease") == 42
    assert parse_id(42, "lease") == 42
    assert parse_id(str(2**63 - 1), "lease") == 2**63 - 1


def _in_a_request(work):
    """Run `work` the way a view runs: inside TenantGuardMiddleware."""
    out = {}

    def view(request):
        out["value"] = work()
        return None

    TenantGuardMiddleware(view)(RequestFactory().get("/"))
    return out["value"]


def test_an_unscoped_tenant_query_in_a_request_refuses_to_run(alice):
    from scheduler import services

    online_server(gpus=1)
    services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    for attempt in (
        lambda: list(Lease.objects.all()),
        lambda: Lease.objects.filter(pk=1).first(),
        lambda: Lease.objects.count(),
        lambda: Lease.objects.exists(),
        lambda: Lease.objects.filter(pk=0).update(region="x"),
        lambda: Lease.objects.filter(pk=0).delete(),
    ):
        with pytest.raises(UnscopedQuery):
            _in_a_request(attempt)
    # Outside a request (jobs, commands) the same query runs.
    assert Lease.objects.count() == 1


def test_scoped_queries_run_in_a_request(alice, charlie):
    from scheduler import services

    online_server(gpus=2)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    assert _in_a_request(lambda: list(Lease.objects.for_org(alice.org))) == [lease]
    assert _in_a_request(lambda: list(Lease.objects.for_org(charlie.org))) == []
    # Through an object already reached (a related manager): the lease's own allocations.
    assert _in_a_request(lambda: lease.allocations.count()) == 1
    # A caller that says why.
    assert _in_a_request(lambda: Lease.objects.unscoped("a test of the guard").count()) == 1

    def platform():
        with platform_work("the scheduler's own bookkeeping"):
            return Lease.objects.count()

    assert _in_a_request(platform) == 1


def test_unscoped_needs_a_reason():
    with pytest.raises(ImproperlyConfigured):
        Lease.objects.unscoped("  ")
    with pytest.raises(ImproperlyConfigured):
        platform_work("")


def test_access_functions_answer_another_tenants_object_like_a_missing_one(alice, bob, charlie):
    from scheduler import services

    server = online_server(gpus=2, organization=bob.org)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    assert access_lease(Actor.for_org(alice.org), lease.pk) == lease
    assert access_server(Actor.for_org(bob.org), server.pk) == server
    for lookup, pk in ((access_lease, lease.pk), (access_server, server.pk)):
        with pytest.raises(NotFound) as theirs:
            lookup(Actor.for_org(charlie.org), pk)
        with pytest.raises(NotFound) as missing:
            lookup(Actor.for_org(charlie.org), 2**40)
        assert theirs.value.message == missing.value.message


def test_staff_read_every_tenant_but_write_only_through_staff_actions(alice, staff):
    from scheduler import services

    online_server(gpus=1)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    read = RequestFactory().get("/")
    read.user, read.org = staff.user, staff.org
    assert access_lease(Actor.of(read), lease.pk) == lease
    write = RequestFactory().post("/")
    write.user, write.org = staff.user, staff.org
    with pytest.raises(NotFound):
        access_lease(Actor.of(write), lease.pk)
    assert Actor.of(write, staff_action=True).sees_all


# --- defect 5: which servers exist must not leak through lease creation ----------------------------------


def test_naming_another_providers_unlisted_server_reads_like_an_unknown_id(alice, charlie):
    """Before: an unlisted server of another provider got "At most 0 can be allocated" while an unknown id got
    "Invalid pk"; both are now the same "Unknown server." (a customer may name only servers with a live offer)."""
    unlisted = online_server(gpus=2, organization=charlie.org, offer=False)
    answers = []
    for server_id in (unlisted.pk, 2**40):
        response = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1, "server": server_id})
        assert response.status_code == 400, response.content
        answers.append(response.json()["error"]["fields"])
    assert answers[0] == answers[1] == {"server": ["Unknown server."]}
    listed = online_server(gpus=2)
    response = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1, "server": listed.pk})
    assert response.status_code == 201, response.content


def test_an_offer_can_name_only_the_providers_own_server(bob, charlie):
    theirs = online_server(gpus=2, organization=charlie.org, offer=False)
    body = {"server": theirs.pk, "prices": {"card_hour": "2.00"}}
    answers = [bob.api.post("/api/v1/offers/", {**body, "server": pk}) for pk in (theirs.pk, 2**40)]
    assert [a.status_code for a in answers] == [400, 400]
    assert (
        answers[0].json()["error"]["fields"] == answers[1].json()["error"]["fields"] == {"server": ["Unknown server."]}
    )
