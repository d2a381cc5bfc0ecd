"""Nobody can silence a real agent with bad signatures sent from (or claiming) its address: a correctly signed
report or desired-state read is never refused for someone else's bad ones (issue 13)."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
import time_machine

from inventory import telemetry
from inventory.models import Server
from tests.support.agent_reports import agent, h100, registered, sample_rows  # noqa: F401 - fixtures

AGENT_ADDRESS = "127.0.0.1"  # where the test client's requests, the agent's included, come from


@pytest.fixture(autouse=True)
def _forget_telemetry_partitions():
    # A test's daily partition goes with its rolled-back transaction; the next test must not trust the memory.
    telemetry._known_days.clear()
    yield
    telemetry._known_days.clear()


def _signed_workloads_read(agent_, *, secret=None, **extra):
    ts = str(int(time.time()))
    signature = hmac.new((secret or agent_.secret).encode(), ts.encode() + b".", hashlib.sha256).hexdigest()
    return agent_.client.get(
        "/api/v1/agent/workloads/",
        HTTP_X_AGENT_ID=agent_.agent_id,
        HTTP_X_AGENT_TIMESTAMP=ts,
        HTTP_X_AGENT_SIGNATURE=signature,
        **extra,
    )


@pytest.mark.parametrize("forwarded", [None, AGENT_ADDRESS], ids=["same-address", "forged-forwarded-for"])
@time_machine.travel(datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC), tick=False)  # inside one rate window
def test_a_flood_of_bad_signatures_never_refuses_the_agents_signed_reports(agent, settings, forwarded):  # noqa: F811
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "agent_auth_fail": "4/60"}
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    codes = []
    for _ in range(10):
        codes.append(
            agent.client.post(
                "/api/v1/agent/reports/",
                data=agent.body(),
                content_type="application/json",
                HTTP_X_AGENT_ID=agent.agent_id,
                HTTP_X_AGENT_TIMESTAMP=str(int(time.time())),
                HTTP_X_AGENT_SIGNATURE="0" * 64,
                **extra,
            ).status_code
        )
    # The bad ones: refused for their signature, then answered 429 once the address is over its limit.
    assert codes == [401] * 4 + [429] * 6

    before = sample_rows()
    accepted = agent.post(agent.body())
    assert accepted.status_code == 202, accepted.content
    assert sample_rows() == before + len(agent.uuids)
    assert Server.objects.get(agent_id=agent.agent_id).last_seq == agent.seq
    assert _signed_workloads_read(agent).status_code == 200
    # ... while the bad ones from that address stay refused.
    assert agent.post(agent.body(), secret="guess").status_code == 429
    assert _signed_workloads_read(agent, secret="guess").status_code == 429
