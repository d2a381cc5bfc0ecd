"""Secrets are shown once, at creation, and never again: not in logs (at DEBUG), admin lists, pages or API reads."""

from __future__ import annotations

import logging

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import register_server
from tests.factories import GpuModelFactory, UserFactory

H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def root(db) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_api_keys_enrolment_tokens_and_agent_secrets_appear_once_and_nowhere_else(bob, root, caplog):
    caplog.set_level(logging.DEBUG)
    model = GpuModelFactory(nvml_names=[H100])
    key = bob.api.post("/api/v1/auth/keys/", {"name": "ci"}, format="json").json()["token"]
    server = register_server(bob, model, name="s1", region="r1", cpu_cores=8, ram_gb=64, disk_gb=100)
    token = server["enrollment_token"]
    gpus = [{"index": 0, "uuid": "GPU-1111", "name": H100}]
    enrolled = APIClient().post(
        "/api/v1/agent/enroll/", {"enrollment_token": token, "hostname": "h", "gpus": gpus}, format="json"
    )
    assert enrolled.status_code == 201
    secret = enrolled.json()["agent_secret"]
    secrets = {"api key": key, "enrolment token": token, "agent secret": secret}

    seen = [
        bob.api.get("/api/v1/auth/keys/").content,
        bob.api.get("/api/v1/servers/").content,
        bob.api.get(f"/api/v1/servers/{server['id']}/").content,
        Client().get("/metrics").content,
    ]
    bob_web = Client()
    bob_web.force_login(bob.user)
    seen += [bob_web.get("/servers/").content, bob_web.get(f"/servers/{server['id']}/").content]
    for name in ("accounts_apikey", "inventory_server", "inventory_gpu"):
        seen.append(root.get(reverse(f"admin:{name}_changelist")).content)
    seen.append(root.get(reverse("admin:inventory_server_change", args=[server["id"]])).content)
    logs = caplog.text
    for what, value in secrets.items():
        assert value not in logs, f"the {what} is in the logs"
        for body in seen:
            assert value.encode() not in body, f"the {what} is shown after creation"
