"""The lean path of agent reports (inventory/agent_api.py, issue 18): AgentReportMiddleware hands a POST to the
report path straight to the view the URLconf names for it, and that view answers without DRF's request machinery;
what a report is answered must not change (API.md, Agent; the behaviour itself: test_agent_ingest.py)."""

from __future__ import annotations

from django.db import OperationalError

from inventory import agent_api, ingest
from tests.support.agent_reports import sample_rows
from workloads.api import AgentReportApi


def test_the_middleware_calls_the_view_the_urlconf_names_for_the_report_path():
    view = agent_api._report_view()
    assert view.view_class is AgentReportApi  # the workloads layer's, which applies the workload states too


def test_a_report_still_passes_the_security_middleware_and_answers_the_fixed_json(agent):
    response = agent.post(agent.body())
    assert response.status_code == 202
    assert response.content == b'{"accepted":true}' and response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware, above the dispatch
    again = agent.post(agent.body(seq=agent.seq))
    assert again.status_code == 200 and again.json() == {"accepted": False, "duplicate": True}


def test_errors_read_as_every_api_error(agent):
    refused = agent.post(agent.body(), secret="not-the-secret")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "bad_signature"
    bad = agent.post(b'{"seq": 1, "gpus": [')
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_request"
    assert agent.client.get("/api/v1/agent/reports/").status_code == 405  # other methods: DRF as before
    assert sample_rows() == 0


def test_a_report_that_loses_the_database_is_answered_503_and_can_be_sent_again(agent, monkeypatch):
    def lost(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    body = agent.body()
    monkeypatch.setattr(ingest, "report_ingest", lost)
    response = agent.post(body)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response["Retry-After"] == "5"
    monkeypatch.undo()
    assert agent.post(body).status_code == 202
    assert sample_rows() == 8


def test_the_answer_speaks_the_language_the_agent_asks_for(agent, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "agent_reports": "1/60"}
    assert agent.post(agent.body()).status_code == 202
    english = agent.post(agent.body())
    assert english.status_code == 429 and english["Retry-After"]
    agent.client.credentials(HTTP_ACCEPT_LANGUAGE="zh-hans")
    chinese = agent.post(agent.body())
    assert chinese.status_code == 429
    assert chinese.json()["error"]["message"] != english.json()["error"]["message"]
