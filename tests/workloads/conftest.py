"""What the workload tests share: an enrolled 8-card server with its agent (an independent implementation of the
agent's side of the contract: the signed desired-state read and signed reports), OpenSSH keys made with
`cryptography`, and renting through the API."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from rest_framework.test import APIClient

from tests.conftest import Persona, register_server
from tests.factories import GpuModelFactory

H100 = "NVIDIA H100 80GB HBM3"
PUBLIC_HOST = "gpu1.example.com"


class Agent:
    """The agent of one server, speaking the contract of notes/workloads-contract.md with its own signing code."""

    def __init__(self, server_id: int, agent_id: str, secret: str, uuids: list[str]):
        self.server_id, self.agent_id, self.secret, self.uuids = server_id, agent_id, secret, uuids
        self.client = APIClient()
        self.seq = 0

    def _signed(self, body: bytes) -> dict[str, str]:
        ts = str(int(time.time()))
        signature = hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {"HTTP_X_AGENT_ID": self.agent_id, "HTTP_X_AGENT_TIMESTAMP": ts, "HTTP_X_AGENT_SIGNATURE": signature}

    def get_desired(self):
        return self.client.get("/api/v1/agent/workloads/", **self._signed(b""))

    def desired(self) -> dict[str, Any]:
        response = self.get_desired()
        assert response.status_code == 200, response.content
        return response.json()

    def report(self, workloads: list[dict] | None = None, workloads_version: int | None = None):
        self.seq += 1
        sample = {"utilization_pct": 10, "memory_used_mb": 100, "temperature_c": 50, "power_w": 200, "ecc_dbe": 0}
        body: dict[str, Any] = {
            "seq": self.seq,
            "sent_at": datetime.now(UTC).isoformat(),
            "gpus": [{"uuid": uuid, **sample, "xid_errors": []} for uuid in self.uuids],
        }
        if workloads is not None:
            body["workloads"] = workloads
        if workloads_version is not None:
            body["workloads_version"] = workloads_version
        raw = json.dumps(body).encode()
        response = self.client.post(
            "/api/v1/agent/reports/", data=raw, content_type="application/json", **self._signed(raw)
        )
        assert response.status_code == 202, response.content
        return response


@dataclass
class Box:
    """A provider's enrolled server, listed by a live offer, with its agent."""

    server_id: int
    offer_id: int
    agent: Agent
    uuids: list[str]


@pytest.fixture(autouse=True)
def _forget_telemetry_partitions():
    """Reports store samples in daily partitions that the first report of a day creates, remembered per process; a
    test's partition goes with its rolled-back transaction, so the next test on the same (travelled-to) day must
    not trust the memory."""
    from inventory import telemetry

    telemetry._known_days.clear()
    yield
    telemetry._known_days.clear()


@pytest.fixture
def h100(db):
    return GpuModelFactory(slug="wl-h100", name="WL H100", nvml_names=[H100])


def enrolled_box(
    provider: Persona,
    model,
    *,
    name: str,
    prefix: str,
    gpus: int = 8,
    runtime: str = "docker",
    public_host: str = PUBLIC_HOST,
    host_access: bool = False,
    prices: dict | None = None,
) -> Box:
    """Register a server through the API, enrol its agent with the one-time token, and list it."""
    created = register_server(
        provider,
        model,
        name=name,
        gpu_count=gpus,
        cpu_cores=128,
        ram_gb=1024,
        disk_gb=8000,
        runtime=runtime,
        public_host=public_host,
    )
    uuids = [f"GPU-{prefix}{i:04d}-0000-4000-8000-000000000000" for i in range(gpus)]
    enrolled = APIClient().post(
        "/api/v1/agent/enroll/",
        {
            "enrollment_token": created["enrollment_token"],
            "hostname": f"{name}.internal",
            "gpus": [{"index": i, "uuid": u, "name": H100, "memory_total_mb": 81559} for i, u in enumerate(uuids)],
        },
        format="json",
    )
    assert enrolled.status_code == 201, enrolled.content
    body = enrolled.json()
    offer = provider.api.post(
        "/api/v1/offers/",
        {
            "server": created["id"],
            "prices": prices or {"card_hour": "2.5000", "server_month": "12000.0000"},
            "host_access": host_access,
        },
        format="json",
    )
    assert offer.status_code == 201, offer.content
    agent = Agent(created["id"], body["agent_id"], body["agent_secret"], uuids)
    return Box(server_id=created["id"], offer_id=offer.json()["id"], agent=agent, uuids=uuids)


@pytest.fixture
def box(bob, h100) -> Box:
    """Bob's 8-card H100 server running containers, reached by customers at gpu1.example.com."""
    return enrolled_box(bob, h100, name="box-1", prefix="b0x1")


def openssh_public_key(private_key, comment: str = "") -> str:
    text = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return text.decode() + (f" {comment}" if comment else "")


def add_key(persona: Persona, name: str = "laptop") -> dict:
    """A fresh ed25519 key on `persona`'s account (201 asserted)."""
    public = openssh_public_key(ed25519.Ed25519PrivateKey.generate(), f"{name}@example.com")
    response = persona.api.post("/api/v1/ssh-keys/", {"name": name, "public_key": public}, format="json")
    assert response.status_code == 201, response.content
    return {**response.json(), "public_key": public}


def rent(persona: Persona, **body):
    body.setdefault("plan", "card_hour")
    return persona.api.post("/api/v1/leases/", body, format="json")


def template_id(slug: str) -> int:
    from workloads.models import Template

    return Template.objects.get(organization=None, slug=slug).pk


def rent_with_workload(persona: Persona, *, template: str = "cuda-ssh", keys: list[int] = (), **body) -> dict:
    """A lease with a workload of a public template (201 asserted)."""
    if "workload" not in body:  # looked up only when needed: a flushed live_server database has no templates
        body["workload"] = {"template": template_id(template), "ssh_keys": list(keys)}
    response = rent(persona, **body)
    assert response.status_code == 201, response.content
    return response.json()
