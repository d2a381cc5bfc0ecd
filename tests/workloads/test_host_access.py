"""Host access (API.md, Workloads): a server_month lease on a bare server whose offer grants it gets SSH onto the
host as a lease-only user; no other plan, and no offer without it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from scheduler.models import Lease
from tests.workloads.conftest import PUBLIC_HOST, add_key, enrolled_box, rent, template_id


@pytest.fixture
def bare(bob, h100):
    """Bob's bare 8-card server, rented whole with SSH onto the host."""
    return enrolled_box(bob, h100, name="bare-1", prefix="ba4e", runtime="host", host_access=True)


def month() -> str:
    return (timezone.now() + timedelta(days=30)).isoformat()


def test_a_whole_server_lease_gets_the_host_as_its_own_user(alice, bare):
    key = add_key(alice)
    response = rent(alice, plan="server_month", end_at=month(), workload={"access": "host", "ssh_keys": [key["id"]]})
    assert response.status_code == 201, response.content
    lease = response.json()
    assert lease["workload"]["access"] == "host" and lease["workload"]["image"] == ""
    assert {g["server"] for g in lease["gpus"]} == {bare.server_id} and len(lease["gpus"]) == 8
    [item] = bare.agent.desired()["workloads"]
    assert item["access"] == "host" and item["user"] == f"lease{lease['id']}"
    assert sorted(item["gpus"]) == sorted(bare.uuids) and item["ssh_keys"] == [key["public_key"]]
    bare.agent.report([{"id": item["id"], "state": "running", "ports": {"22": 22}}])
    [ssh] = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["workloads"][0]["connect"]
    assert ssh["command"] == f"ssh -p 22 lease{lease['id']}@{PUBLIC_HOST}"


def test_host_access_needs_a_key_and_runs_no_image(alice, bare):
    response = rent(alice, plan="server_month", end_at=month(), workload={"access": "host"})
    assert response.status_code == 400 and "ssh_keys" in response.json()["error"]["fields"]["workload"]
    key = add_key(alice)
    for image in ({"template": template_id("cuda-ssh")}, {"image": "ubuntu:22.04"}):
        workload = {"access": "host", "ssh_keys": [key["id"]], **image}
        response = rent(alice, plan="server_month", end_at=month(), workload=workload)
        assert response.status_code == 400 and "image" in response.json()["error"]["fields"]["workload"]
    assert not Lease.objects.exists()


def test_host_access_is_for_whole_server_leases_only(alice, bare):
    key = add_key(alice)
    response = rent(alice, gpu_count=8, workload={"access": "host", "ssh_keys": [key["id"]]})
    assert response.status_code == 400
    assert "access" in response.json()["error"]["fields"]["workload"]
    assert not Lease.objects.exists()


def test_host_access_needs_an_offer_that_grants_it(alice, bob, h100):
    enrolled_box(bob, h100, name="bare-2", prefix="ba5e", runtime="host", host_access=False)
    key = add_key(alice)
    response = rent(alice, plan="server_month", end_at=month(), workload={"access": "host", "ssh_keys": [key["id"]]})
    # No server could ever serve it: bad input on the request's size, as for any filter that matches nothing.
    assert response.status_code == 400, response.content
    assert "servers" in response.json()["error"]["fields"]
    assert not Lease.objects.exists()


def test_containers_are_not_placed_on_a_bare_server_nor_host_access_on_a_docker_one(alice, bob, h100, bare):
    key = add_key(alice)
    container = rent(alice, gpu_count=1, workload={"template": template_id("cuda-ssh"), "ssh_keys": [key["id"]]})
    assert container.status_code == 400 and "gpu_count" in container.json()["error"]["fields"]
    assert not Lease.objects.exists()
    enrolled_box(bob, h100, name="docker-1", prefix="d0c1", host_access=True)
    # With the bare server taken, a docker server whose offer says host_access still runs no host access.
    assert rent(alice, plan="server_month", end_at=month(), server=bare.server_id).status_code == 201
    response = rent(alice, plan="server_month", end_at=month(), workload={"access": "host", "ssh_keys": [key["id"]]})
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_capacity"
    # A lease without a workload may still take the bare server's cards (it only reserves them).
    assert Lease.objects.count() == 1
