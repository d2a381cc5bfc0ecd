"""The agent's HTTP side, on `urllib.request` only: enrolment, signed report delivery, the signed GET of the
workloads the platform wants on this server, and the back-off policy.

Delivery outcomes of one report POST (`Client.send_report`):
- `delivered`: 2xx. A 200 `{"duplicate": true}` (the platform already has that seq) is delivered too.
- `retry`: the platform is unreachable or busy: a connection error or timeout (connect and read: 10 s), a 5xx,
  408, 409 or 429, or a redirect (a wrong URL in the credentials file: logged, never followed, so a POST is never
  silently turned into a GET). The caller keeps the report and waits `Backoff.delay()` before trying again.
- `refused`: any other 4xx: the platform will never take this report (a bad signature, a stale timestamp,
  a GPU that is not this server's). Logged and dropped, so one bad report cannot block the queue forever.

`Client.get_workloads` GETs the desired workloads (signed over an empty body) with the same outcome kinds: `fetched`
(a 200 whose body is a JSON object, in `Outcome.payload`), `retry` (no answer, 5xx, 408/409/429, a redirect, or a
200 that is not a JSON object) and `refused` (any other 4xx). It never raises for network trouble either.

Signing uses the host clock, unless the platform's `Date` header shows it more than a minute off: then the agent
signs with the platform's time (and logs a warning to fix NTP), and a 401 that the correction explains is retried at
once, so a host with a wrong clock does not lose its reports.

Back-off is exponential with full jitter: a delay drawn uniformly from [0, min(cap, base * 2**attempt)], base 1 s,
cap 60 s. A `Retry-After` header (seconds or an HTTP date) is honoured as a floor (up to an hour).
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from agents import __version__, signing

log = logging.getLogger("suanli.agent.client")

ENROLL_PATH = "/api/v1/agent/enroll/"
REPORTS_PATH = "/api/v1/agent/reports/"
WORKLOADS_PATH = "/api/v1/agent/workloads/"
TIMEOUT_S = 10.0
RETRYABLE_4XX = frozenset({408, 409, 429})
RETRY_AFTER_MAX_S = 3600.0
MAX_RESPONSE_BYTES = 1 << 20
SKEW_TOLERANCE_S = 60.0

DELIVERED = "delivered"
RETRY = "retry"
REFUSED = "refused"
FETCHED = "fetched"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass(frozen=True)
class Outcome:
    kind: str  # DELIVERED, RETRY or REFUSED (a report POST); FETCHED, RETRY or REFUSED (a GET)
    status: int | None = None
    retry_after: float | None = None
    duplicate: bool = False
    detail: str = ""
    payload: Any = None  # FETCHED: the decoded JSON object


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused or reset, DNS, TLS, timeout)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx, which the caller treats as "retry"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, RETRY_AFTER_MAX_S))


class Backoff:
    """Exponential back-off with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: Callable[[], float] = random.random):
        self.base, self.cap, self.rng = base, cap, rng

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** min(attempt, 32))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before retry number `attempt` (0 for the first retry); never less than a Retry-After."""
        delay = self.rng() * self.ceiling(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class Client:
    def __init__(
        self,
        base_url: str,
        agent_id: str | None = None,
        secret: str | None = None,
        *,
        timeout: float = TIMEOUT_S,
        wall: Callable[[], float] = time.time,
    ):
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self.secret = secret
        self.timeout = timeout
        self.wall = wall
        self.skew = 0.0  # seconds to add to our clock to get the platform's (from its Date header)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.user_agent = f"suanli-agent/{__version__}"

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        """POST `body` as JSON; an HTTP answer of any status is returned, no answer raises TransportError."""
        return self.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})

    def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        """GET `path`; an HTTP answer of any status is returned, no answer raises TransportError."""
        return self.request("GET", path, None, headers)

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None) -> Response:
        request = urllib.request.Request(  # noqa: S310 - the URL is the platform's, from the credentials file
            self.base_url + path,
            data=body,
            method=method,
            headers={"Accept": "application/json", "User-Agent": self.user_agent, **(headers or {})},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                return Response(resp.status, resp.read(MAX_RESPONSE_BYTES), dict(resp.headers.items()))
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    data = exc.read(MAX_RESPONSE_BYTES)
                except (OSError, HTTPException):
                    data = b""
                return Response(exc.code, data, dict(exc.headers.items()) if exc.headers else {})
        except urllib.error.URLError as exc:
            raise TransportError(str(exc.reason)) from exc
        except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, a bad status line, a bad URL
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    def send_report(self, body: bytes) -> Outcome:
        """POST one raw report body, signed now. Never raises for network trouble: see the module docstring."""
        try:
            resp = self._signed("POST", REPORTS_PATH, body)
        except TransportError as exc:
            return Outcome(RETRY, detail=str(exc))
        if 200 <= resp.status < 300:
            payload = resp.json()
            duplicate = isinstance(payload, dict) and bool(payload.get("duplicate"))
            return Outcome(DELIVERED, resp.status, duplicate=duplicate, detail=_detail(resp))
        return self._failure(resp)

    def get_workloads(self) -> Outcome:
        """GET the workloads the platform wants on this server, signed over an empty body. Never raises for network
        trouble: FETCHED with the JSON object in `payload`, else RETRY or REFUSED (see the module docstring)."""
        try:
            resp = self._signed("GET", WORKLOADS_PATH, b"")
        except TransportError as exc:
            return Outcome(RETRY, detail=str(exc))
        if resp.status == 200:
            payload = resp.json()
            if not isinstance(payload, dict):
                return Outcome(RETRY, resp.status, detail=f"not a JSON object: {_detail(resp)[:100]}")
            return Outcome(FETCHED, resp.status, payload=payload)
        if 200 <= resp.status < 300:
            return Outcome(RETRY, resp.status, detail=f"unexpected HTTP {resp.status}")
        return self._failure(resp)

    def signed(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Response:
        """One signed request of any method (the volume-transfer endpoints: agents/transfers.py), signed over
        `body`; any HTTP answer is returned, no answer raises TransportError."""
        return self._signed(method, path, body, headers)

    def _failure(self, resp: Response) -> Outcome:
        """RETRY or REFUSED for an answer that is not a success."""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.wall())
        if 300 <= resp.status < 400:
            where = resp.headers.get("Location", "?")
            return Outcome(RETRY, resp.status, retry_after, detail=f"redirected to {where}: fix the url in the config")
        if resp.status >= 500 or resp.status in RETRYABLE_4XX:
            return Outcome(RETRY, resp.status, retry_after, detail=_detail(resp))
        return Outcome(REFUSED, resp.status, detail=_detail(resp))

    def _signed(self, method: str, path: str, body: bytes, extra: dict[str, str] | None = None) -> Response:
        """One signed request; re-signed once when a 401 comes with a Date that shows our clock is off."""
        if not self.agent_id or not self.secret:
            raise ValueError("a signed request needs agent_id and secret")
        skew = self.skew
        resp = self._signed_once(method, path, body, extra)
        if resp.status == 401 and abs(self.skew - skew) >= SKEW_TOLERANCE_S:
            resp = self._signed_once(method, path, body, extra)  # the platform's Date shows our clock is off
        return resp

    def _signed_once(self, method: str, path: str, body: bytes, extra: dict[str, str] | None = None) -> Response:
        timestamp = int(self.wall() + self.skew)
        headers = {**(extra or {}), **signing.headers(self.agent_id or "", self.secret or "", body, timestamp)}
        if method == "POST":
            resp = self.post(path, body, headers)
        elif method == "GET":
            resp = self.get(path, headers)
        else:
            resp = self.request(method, path, body, headers)
        self._learn_skew(resp)
        return resp

    def _learn_skew(self, resp: Response) -> None:
        """Follow the platform's clock (its Date header) when ours is more than SKEW_TOLERANCE_S off it."""
        try:
            date = email.utils.parsedate_to_datetime(resp.headers.get("Date", ""))
        except (TypeError, ValueError, IndexError):
            return
        if date is None or date.tzinfo is None:
            return
        measured = date.timestamp() - self.wall()
        if abs(measured) < SKEW_TOLERANCE_S:
            if self.skew:
                log.info("the host clock agrees with the platform's again")
            self.skew = 0.0
        elif abs(measured - self.skew) >= SKEW_TOLERANCE_S:
            log.warning(
                "the host clock is %+.0f s off the platform's: signing with the platform's time (fix NTP on this host)",
                -measured,
            )
            self.skew = measured

    def enroll(self, token: str, hostname: str, gpus: list[dict[str, Any]]) -> Response:
        payload = {"enrollment_token": token, "hostname": hostname, "gpus": gpus, "agent_version": __version__}
        body = json.dumps(payload).encode()
        return self.post(ENROLL_PATH, body)


def _detail(resp: Response) -> str:
    return resp.body[:300].decode("utf-8", "replace")
