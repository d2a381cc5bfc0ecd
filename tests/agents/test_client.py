import json
import socket

import pytest

from agents.client import DELIVERED, FETCHED, REFUSED, RETRY, Backoff, Client, parse_retry_after


def client_for(platform) -> Client:
    return Client(platform.url, platform.AGENT_ID, platform.SECRET, timeout=2)


def report(seq: int) -> bytes:
    return json.dumps({"seq": seq, "gpus": []}).encode()


def test_backoff_is_full_jitter_between_zero_and_the_exponential_ceiling_capped_at_60s():
    assert [Backoff().ceiling(a) for a in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert Backoff(rng=lambda: 0.0).delay(5) == 0.0
    assert Backoff(rng=lambda: 0.999999).delay(3) == pytest.approx(8, rel=1e-3)
    assert Backoff(rng=lambda: 0.5).delay(100) == 30.0
    delays = [Backoff().delay(4) for _ in range(2000)]
    assert 0 <= min(delays) < 1 and 15 < max(delays) <= 16  # spread over the whole range


def test_retry_after_is_a_floor_on_the_back_off():
    assert Backoff(rng=lambda: 0.1).delay(0, retry_after=30) == 30
    assert Backoff(rng=lambda: 1.0).delay(7, retry_after=5) == 60


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert parse_retry_after("999999") == 3600


def test_a_signed_report_is_delivered(platform):
    outcome = client_for(platform).send_report(report(1))
    assert outcome.kind == DELIVERED and outcome.status == 202 and not outcome.duplicate
    assert [r["seq"] for r in platform.received] == [1]


def test_a_duplicate_counts_as_delivered(platform):
    client = client_for(platform)
    client.send_report(report(1))
    outcome = client.send_report(report(1))
    assert outcome.kind == DELIVERED and outcome.duplicate and outcome.status == 200


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409, 429])
def test_server_errors_and_throttling_are_retried(platform, status):
    platform.fail_next, platform.fail_status, platform.retry_after = 1, status, "7"
    outcome = client_for(platform).send_report(report(1))
    assert outcome.kind == RETRY and outcome.status == status and outcome.retry_after == 7


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_refuse_the_report_for_good(platform, status):
    platform.fail_next, platform.fail_status = 1, status
    assert client_for(platform).send_report(report(1)).kind == REFUSED


def test_a_bad_secret_is_refused(platform):
    assert Client(platform.url, platform.AGENT_ID, "wrong").send_report(report(1)).kind == REFUSED


def test_a_platform_that_is_down_is_retried(platform):
    platform.down()
    outcome = client_for(platform).send_report(report(1))
    assert outcome.kind == RETRY and outcome.status is None and outcome.detail


def test_a_read_timeout_is_retried():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        client = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", "a", "s", timeout=0.3)
        assert client.send_report(report(1)).kind == RETRY
    finally:
        listener.close()


def test_a_redirect_is_not_followed_but_retried(platform):
    platform.fail_next, platform.fail_status = 1, 301
    assert client_for(platform).send_report(report(1)).kind == RETRY


def test_a_host_clock_far_off_the_platform_follows_the_platform_date_and_loses_nothing():
    import time

    from tests.agents.fakes import FakePlatform

    platform = FakePlatform(wall=lambda: time.time() + 1000)  # the host is 1000 s behind the platform
    try:
        client = client_for(platform)
        first = client.send_report(report(1))  # refused as stale, corrected from the Date header, re-signed
        assert first.kind == DELIVERED
        assert 990 < client.skew < 1010
        assert client.send_report(report(2)).kind == DELIVERED
        assert [r["seq"] for r in platform.received] == [1, 2]
    finally:
        platform.close()


def test_a_small_clock_difference_is_left_alone(platform):
    client = client_for(platform)
    client.send_report(report(1))
    assert client.skew == 0.0


# -- the signed GET of the desired workloads -------------------------------------------------------------------------

DESIRED = {"version": 7, "server": 42, "public_host": "", "port_range": [40000, 40999], "workloads": []}


def test_the_desired_workloads_are_fetched_with_a_get_signed_over_an_empty_body(platform):
    platform.desired = DESIRED
    outcome = client_for(platform).get_workloads()
    assert outcome.kind == FETCHED and outcome.status == 200 and outcome.payload == DESIRED
    assert platform.gets == 1


def test_the_get_is_signed_exactly_as_the_contract_says():
    import hashlib
    import hmac
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen.update(method=self.command, path=self.path, headers=dict(self.headers.items()))
            seen["body"] = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps(DESIRED).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", "agent-9", "k3y", wall=lambda: 1_800_000_000.7)
        assert client.get_workloads().payload == DESIRED
    finally:
        server.shutdown()
        server.server_close()
    assert (seen["method"], seen["path"], seen["body"]) == ("GET", "/api/v1/agent/workloads/", b"")
    headers = seen["headers"]
    assert headers["X-Agent-Id"] == "agent-9" and headers["X-Agent-Timestamp"] == "1800000000"
    expected = hmac.new(b"k3y", b"1800000000.", hashlib.sha256).hexdigest()
    assert headers["X-Agent-Signature"] == expected
    assert "Content-Type" not in headers


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_a_failing_get_is_retried_with_its_retry_after(platform, status):
    platform.desired = DESIRED
    platform.get_fail_next, platform.get_fail_status, platform.retry_after = 1, status, "9"
    outcome = client_for(platform).get_workloads()
    assert outcome.kind == RETRY and outcome.status == status and outcome.retry_after == 9 and outcome.payload is None


def test_a_get_of_a_platform_that_is_down_is_retried_and_does_not_raise(platform):
    platform.down()
    outcome = client_for(platform).get_workloads()
    assert outcome.kind == RETRY and outcome.status is None and outcome.detail


def test_a_get_with_a_bad_secret_or_a_missing_endpoint_is_refused(platform):
    platform.desired = DESIRED
    assert Client(platform.url, platform.AGENT_ID, "wrong").get_workloads().kind == REFUSED
    platform.desired = None
    assert client_for(platform).get_workloads().status == 404


def test_a_200_that_is_not_a_json_object_is_retried_not_trusted(platform):
    platform.desired = ["not", "an", "object"]
    outcome = client_for(platform).get_workloads()
    assert outcome.kind == RETRY and outcome.status == 200


def test_a_get_from_a_host_whose_clock_is_far_off_is_signed_again_with_the_platform_time():
    import time

    from tests.agents.fakes import FakePlatform

    platform = FakePlatform(wall=lambda: time.time() - 900)  # the host is 900 s ahead
    platform.desired = DESIRED
    try:
        client = client_for(platform)
        assert client.get_workloads().kind == FETCHED
        assert -910 < client.skew < -890
        assert client.get_workloads().kind == FETCHED
    finally:
        platform.close()
