"""Test doubles for the agent: a purpose-built fake NVML, a fake platform on 127.0.0.1, a fake clock, and the
platform's desired workloads as the reconciler reads them.

The fake NVML raises the real `pynvml.NVMLError` (with its per-code subclasses), so the collector is tested against
exactly what the binding raises; it has no driver behind it.
"""

from __future__ import annotations

import copy
import email.utils
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pynvml

from agents.client import FETCHED, REFUSED, RETRY, Outcome

MIB = 1024 * 1024


class Struct:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


@dataclass
class FakeCard:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    serial: str = "1650123456789"
    util: int = 87
    mem_util: int = 41
    used_mib: int = 70000
    total_mib: int = 81559
    temp: int = 66
    power_mw: int = 612_345
    limit_mw: int = 700_000
    sm: int = 1980
    mem: int = 2619
    ecc: dict[tuple[int, int], int] = field(default_factory=lambda: {(0, 0): 2, (1, 0): 0, (0, 1): 17, (1, 1): 1})
    retired: dict[int, list[int]] = field(default_factory=lambda: {0: [0x10, 0x20, 0x30], 1: [0x40]})
    retire_pending: int = 0
    remap: tuple[int, int, int, int] = (3, 1, 0, 0)
    reasons: int = 0x4 | 0x40
    replays: int = 12
    fan: int = 55
    unsupported: set[str] = field(default_factory=set)


class FakeNVML:
    """The pynvml functions the collector calls, over a list of FakeCard; constants come from pynvml itself."""

    NVMLError = pynvml.NVMLError

    def __init__(self, cards: list[FakeCard], init_error: int | None = None):
        self.cards = cards
        self.init_error = init_error
        self.events: list[tuple[int | None, int, int]] = []  # (card index or None, event type, data)
        self.wait_error: int | None = None
        self.calls: list[str] = []
        self.registered: set[int] = set()
        self.register_error: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:  # constants: NVML_*, nvmlEventType*, ...
        if name.startswith(("NVML_", "nvmlEventType", "nvmlClocks")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _card(self, handle: Any, fn: str) -> FakeCard:
        self.calls.append(fn)
        card = self.cards[handle.index]
        if fn in card.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return card

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return Struct(index=index)  # a new object each call, as ctypes pointers are

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return self._card(h, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, h: Any) -> str:
        return self._card(h, "nvmlDeviceGetName").name

    def nvmlDeviceGetSerial(self, h: Any) -> str:
        return self._card(h, "nvmlDeviceGetSerial").serial

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        c = self._card(h, "nvmlDeviceGetUtilizationRates")
        return Struct(gpu=c.util, memory=c.mem_util)

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: Any = None) -> Any:
        c = self._card(h, "nvmlDeviceGetMemoryInfo")
        return Struct(total=c.total_mib * MIB, used=c.used_mib * MIB, free=(c.total_mib - c.used_mib) * MIB)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._card(h, "nvmlDeviceGetTemperature").temp

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetEnforcedPowerLimit").limit_mw

    def nvmlDeviceGetClockInfo(self, h: Any, kind: int) -> int:
        c = self._card(h, "nvmlDeviceGetClockInfo")
        return {pynvml.NVML_CLOCK_SM: c.sm, pynvml.NVML_CLOCK_MEM: c.mem}[kind]

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter_type: int) -> int:
        return self._card(h, "nvmlDeviceGetTotalEccErrors").ecc[(error_type, counter_type)]

    def nvmlDeviceGetRetiredPages(self, h: Any, cause: int) -> list[int]:
        return self._card(h, "nvmlDeviceGetRetiredPages").retired[cause]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetRetiredPagesPendingStatus").retire_pending

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        return self._card(h, "nvmlDeviceGetRemappedRows").remap

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetCurrentClocksEventReasons").reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetCurrentClocksThrottleReasons").reasons

    def nvmlDeviceGetPcieReplayCounter(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetPcieReplayCounter").replays

    def nvmlDeviceGetFanSpeed(self, h: Any) -> int:
        return self._card(h, "nvmlDeviceGetFanSpeed").fan

    def nvmlEventSetCreate(self) -> Any:
        return Struct(kind="event set")

    def nvmlDeviceRegisterEvents(self, h: Any, types: int, event_set: Any) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError
        if h.index in self.register_error:
            raise pynvml.NVMLError(self.register_error[h.index])
        self.registered.add(h.index)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self.calls.append("nvmlEventSetWait_v2")
        if self.wait_error is not None:
            raise pynvml.NVMLError(self.wait_error)
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        index, event_type, data = self.events.pop(0)
        device = Struct(index=index) if index is not None else None
        return Struct(device=device, eventType=event_type, eventData=data, gpuInstanceId=0, computeInstanceId=0)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        pass


def cards(n: int = 2) -> list[FakeCard]:
    return [FakeCard(uuid=f"GPU-00000000-0000-0000-0000-{i:012d}") for i in range(n)]


# -- a fake platform --------------------------------------------------------------------------------------------


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """The platform's check, written again from API.md (not imported from agents.signing)."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class FakePlatform:
    """Enrolment, report and desired-workloads endpoints on 127.0.0.1, with switchable failures.

    `fail_next` answers the next N report POSTs with `fail_status` (and `retry_after`); `down()` stops listening
    (connection refused) and `up()` listens again on the same port; `refuse_seqs` answers 400 for those seqs.
    GET /api/v1/agent/workloads/ checks the signature over the empty body and answers `desired` (404 while it is
    None); `get_fail_next` answers the next N GETs with `get_fail_status`; `gets` counts the signed GETs answered 200.
    """

    AGENT_ID = "agent-7"
    SECRET = "s3cret-for-tests"

    def __init__(self, wall: Any = None):
        import time

        self.wall = wall or time.time
        self.received: list[dict[str, Any]] = []  # accepted reports, in arrival order
        self.seen: set[int] = set()
        self.requests = 0
        self.fail_next = 0
        self.fail_status = 503
        self.retry_after: str | None = None
        self.refuse_seqs: set[int] = set()
        self.enrolments: list[dict[str, Any]] = []
        self.enroll_status = 201
        self.desired: dict[str, Any] | None = None
        self.gets = 0
        self.get_fail_next = 0
        self.get_fail_status = 503
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def date_time_string(self, timestamp: float | None = None) -> str:
                return email.utils.formatdate(platform.wall(), usegmt=True)

            def _answer(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _signed(self, body: bytes) -> str | None:
                """None if the request is signed right and fresh, else why not."""
                ts = self.headers.get("X-Agent-Timestamp", "")
                if self.headers.get("X-Agent-Id") != platform.AGENT_ID or not verify(
                    platform.SECRET, ts, body, self.headers.get("X-Agent-Signature", "")
                ):
                    return "bad signature"
                if abs(platform.wall() - int(ts)) > 300:
                    return "stale timestamp"
                return None

            def do_GET(self) -> None:  # noqa: N802
                with platform.lock:
                    platform.requests += 1
                    if self.path != "/api/v1/agent/workloads/":
                        return self._answer(404, {"detail": "not found"})
                    if platform.get_fail_next > 0:
                        platform.get_fail_next -= 1
                        extra = {"Retry-After": platform.retry_after} if platform.retry_after else None
                        return self._answer(platform.get_fail_status, {"detail": "busy"}, extra)
                    refused = self._signed(b"")
                    if refused:
                        return self._answer(401, {"detail": refused})
                    if platform.desired is None:
                        return self._answer(404, {"detail": "no workloads endpoint"})
                    platform.gets += 1
                    return self._answer(200, platform.desired)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with platform.lock:
                    platform.requests += 1
                    if self.path == "/api/v1/agent/enroll/":
                        platform.enrolments.append(json.loads(body))
                        if platform.enroll_status != 201:
                            return self._answer(platform.enroll_status, {"detail": "enrolment token already used"})
                        return self._answer(
                            201, {"server": 42, "agent_id": platform.AGENT_ID, "agent_secret": platform.SECRET}
                        )
                    if self.path != "/api/v1/agent/reports/":
                        return self._answer(404, {"detail": "not found"})
                    if platform.fail_next > 0:
                        platform.fail_next -= 1
                        extra = {"Retry-After": platform.retry_after} if platform.retry_after else None
                        return self._answer(platform.fail_status, {"detail": "busy"}, extra)
                    refused = self._signed(body)
                    if refused:
                        return self._answer(401, {"detail": refused})
                    report = json.loads(body)
                    if report["seq"] in platform.refuse_seqs:
                        return self._answer(400, {"detail": "a GPU this server does not own"})
                    if report["seq"] in platform.seen:
                        return self._answer(200, {"accepted": False, "duplicate": True})
                    platform.seen.add(report["seq"])
                    platform.received.append(report)
                    return self._answer(202, {"accepted": True})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def is_up(self) -> bool:
        return self.server is not None

    def close(self) -> None:
        self.down()


class FakeClock:
    """Monotonic and wall time that only move when the agent waits; `at(t, fn)` runs fn when time reaches t.

    Elapsed time is kept apart from the epoch so that tiny waits still move the monotonic clock.
    """

    def __init__(self, start: float = 1_800_000_000.0):
        self.start = start
        self.elapsed = 0.0
        self.waits: list[float] = []
        self._triggers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.start + self.elapsed

    def monotonic(self) -> float:
        return self.elapsed

    def at(self, elapsed: float, fn: Any) -> None:
        self._triggers.append((elapsed, fn))
        self._triggers.sort(key=lambda t: t[0])

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.elapsed += max(0.0, seconds)
        while self._triggers and self._triggers[0][0] <= self.elapsed:
            _, fn = self._triggers.pop(0)
            fn()


# --- desired workloads (API.md, Agent side) ---------------------------------------------------------------------


def desired_workload(wid: int, **fields: Any) -> dict[str, Any]:
    """One entry of a desired state: a container of a made-up image with no cards, unless `fields` say otherwise."""
    item: dict[str, Any] = {
        "id": wid,
        "lease": wid + 100,
        "access": "container",
        "gpus": [],
        "image": "suanli-test/none:1",
        "command": [],
        "env": {},
        "ports": [22],
        "ssh_keys": [],
        "limits": {},
        "user": "root",
        "desired": "running",
        "generation": 0,
        "stop_by": None,
    }
    item.update(fields)
    return item


def desired_state(
    version: int, *workloads: dict[str, Any], server: int = 1, public_host: str = "", port_range=(40000, 40099)
) -> dict[str, Any]:
    return {
        "version": version,
        "server": server,
        "public_host": public_host,
        "port_range": list(port_range),
        "workloads": list(workloads),
    }


class DesiredSource:
    """Stands in for Client.get_workloads: answers `payload`, or RETRY while `down`, or REFUSED with `refuse`."""

    def __init__(self, payload: dict[str, Any] | None = None) -> None:
        self.payload = payload
        self.down = False
        self.refuse: int | None = None
        self.calls = 0

    def get_workloads(self) -> Outcome:
        self.calls += 1
        if self.down:
            return Outcome(RETRY, detail="[Errno 111] Connection refused")
        if self.refuse:
            return Outcome(REFUSED, self.refuse, detail="no such endpoint")
        return Outcome(FETCHED, 200, payload=copy.deepcopy(self.payload))
