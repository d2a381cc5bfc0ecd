"""An agent of the tests' own for the signed-report API: a minimal, independent implementation of the agent's side
of the protocol (enrolment, HMAC-signed reports), and the fixtures that enrol one. tests/inventory/conftest.py and
the modules that need them import the fixtures: `h100` (a catalogue entry of the tests' own), `registered` (bob's
server and its enrolment token) and `agent` (that server's enrolled agent)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from django.db import connection
from rest_framework.test import APIClient

from inventory.services import server_register
from tests.factories import GpuModelFactory

H100 = "NVIDIA H100 80GB HBM3"


def cards(n=8, prefix="aaaa"):
    return [{"index": i, "uuid": f"GPU-{prefix}{i:04d}-0000-4000-8000-000000000000", "name": H100} for i in range(n)]


@pytest.fixture
def h100():
    return GpuModelFactory(slug="test-h100", name="Test H100", nvml_names=[H100])


@pytest.fixture
def registered(bob, h100):
    server, token = server_register(
        org=bob.org,
        name="box-1",
        region="cn-east-1",
        gpu_model=h100,
        gpu_count=8,
        cpu_cores=64,
        ram_gb=1024,
        disk_gb=8000,
    )
    return server, token


class Agent:
    """A minimal, independent implementation of the agent's side of the protocol."""

    def __init__(self, agent_id: str, secret: str, uuids: list[str]):
        self.agent_id, self.secret, self.uuids = agent_id, secret, uuids
        self.client = APIClient()
        self.seq = 0

    def body(self, seq=None, sent_at=None, **sample):
        if seq is None:
            self.seq += 1
            seq = self.seq
        sent_at = sent_at or datetime.now(UTC)
        gpus = [
            {
                "uuid": u,
                "utilization_pct": 50,
                "memory_used_mb": 1000,
                "temperature_c": 60,
                "power_w": 300,
                "ecc_dbe": 0,
                "xid_errors": [],
                **sample.get(u, {}),
            }
            for u in self.uuids
        ]
        return json.dumps({"seq": seq, "sent_at": sent_at.isoformat(), "gpus": gpus}).encode()

    def post(self, body: bytes, timestamp=None, secret=None, agent_id=None):
        ts = str(int(timestamp if timestamp is not None else time.time()))
        signature = hmac.new((secret or self.secret).encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return self.client.post(
            "/api/v1/agent/reports/",
            data=body,
            content_type="application/json",
            HTTP_X_AGENT_ID=agent_id or self.agent_id,
            HTTP_X_AGENT_TIMESTAMP=ts,
            HTTP_X_AGENT_SIGNATURE=signature,
        )


def enroll(token, gpus=None, client=None):
    client = client or APIClient()
    return client.post(
        "/api/v1/agent/enroll/",
        {"enrollment_token": token, "hostname": "gpu-host-1", "gpus": gpus or cards()},
        format="json",
    )


@pytest.fixture
def agent(registered):
    server, token = registered
    body = enroll(token).json()
    return Agent(body["agent_id"], body["agent_secret"], [c["uuid"] for c in cards()])


def sample_rows():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM inventory_gpusample")
        return cursor.fetchone()[0]
