"""The report loop: collect every interval, spool first, then drain the spool oldest-first to the platform.

One loop, one thread:
- Every `interval` seconds (on a fixed grid, so it does not drift; missed slots are skipped, never burst) the agent
  collects one sample per GPU, builds a report with the next `seq`, and writes it to the spool.
- Then it sends the spool oldest-first, one POST per report, until it is empty, a send fails, or the next
  collection is due (it goes on after collecting; the order is kept because new reports join the tail).
- A failed send (platform unreachable, 5xx, 429, ...) leaves the report in the spool and schedules the next attempt
  after an exponential back-off with full jitter (honouring Retry-After); collection goes on meanwhile, so during an
  outage reports accumulate on disk and are all sent, in order, when the platform answers again.
- A refused report (4xx) is dropped and counted, a duplicate counts as delivered.
- `stop()` (SIGTERM/SIGINT in the CLI) lets the send in flight finish, then the loop returns.
- A simulated host that is "silent" neither collects nor sends.
- With a workload reconciler (`agents.workloads.Reconciler`, which runs in its own thread), each report also carries
  `workloads` and `workloads_version` from the reconciler's last pass.

The clock (`clock`, monotonic, for scheduling), the wall clock (`wall`, for `sent_at`) and the wait are injectable,
so tests run a 10-minute outage in seconds.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agents import __version__
from agents.client import DELIVERED, REFUSED, Backoff, Client, Outcome
from agents.spool import Spool

if TYPE_CHECKING:
    from agents.workloads import Reconciler

log = logging.getLogger("suanli.agent")

MIN_RETRY_S = 0.05  # full jitter may draw 0: never spin


def iso_utc(ts: float) -> str:
    """ISO 8601 in UTC with an explicit offset, to the millisecond: 2026-11-29T03:00:03.123+00:00."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def build_report(
    seq: int, samples: list[dict[str, Any]], *, interval: float, hostname: str, wall: float
) -> dict[str, Any]:
    return {
        "seq": seq,
        "sent_at": iso_utc(wall),
        "interval_s": interval,
        "agent_version": __version__,
        "hostname": hostname,
        "gpus": samples,
    }


def encode(report: dict[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False).encode()


class Agent:
    def __init__(
        self,
        collector: Any,
        spool: Spool,
        client: Client | None,
        *,
        interval: float = 10.0,
        send_every: float | None = None,
        hostname: str | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        wait: Callable[[float], Any] | None = None,
        reconciler: Reconciler | None = None,
    ):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.collector = collector
        self.spool = spool
        self.client = client
        self.interval = float(interval)
        self.send_every = send_every
        self.hostname = hostname or socket.gethostname()
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.wall = wall
        self.reconciler = reconciler
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self.attempt = 0
        self.stats = {"collected": 0, "delivered": 0, "duplicates": 0, "refused": 0, "failures": 0}

    # -- control ----------------------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to end after the send in flight (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- one collection -----------------------------------------------------------------------------------------

    def collect_once(self) -> dict[str, Any] | None:
        """Collect, build and spool one report; None when the simulated host is silent."""
        self.collector.tick()
        if self.collector.silent():
            log.info("simulated silence: not collecting or sending")
            return None
        try:
            samples = self.collector.collect()
        except Exception:  # one bad interval must not end monitoring
            log.exception("collection failed; trying again next interval")
            return None
        try:
            seq = self.spool.next_seq()
        except OSError as exc:  # the seq is advanced in memory before it is saved: still monotonic in this process
            seq = self.spool.last_seq
            log.error("cannot save the spool state (%s); seq %s kept in memory", exc, seq)
        report = build_report(seq, samples, interval=self.interval, hostname=self.hostname, wall=self.wall())
        if self.reconciler is not None:
            try:
                report.update(self.reconciler.report_fields())
            except Exception:  # the telemetry goes out even if the workload side has a bug
                log.exception("cannot add the workloads to report %s", seq)
        body = encode(report)
        self.stats["collected"] += 1
        try:
            self.spool.put(seq, body)
        except OSError as exc:
            self._unspooled(seq, body, exc)
        return report

    def _unspooled(self, seq: int, body: bytes, exc: OSError) -> None:
        """The spool cannot take a report (disk full, read-only): send it straight away if that keeps the order."""
        if self.client is None or len(self.spool):
            self.stats["lost"] = self.stats.get("lost", 0) + 1
            log.error("cannot spool report %s (%s): dropped, the reports before it go first", seq, exc)
            return
        outcome = self.client.send_report(body)
        if outcome.kind == DELIVERED:
            self.stats["delivered"] += 1
            log.error("cannot spool report %s (%s): sent without spooling", seq, exc)
        else:
            self.stats["lost"] = self.stats.get("lost", 0) + 1
            log.error("cannot spool report %s (%s) and the platform did not take it: dropped", seq, exc)

    # -- sending ------------------------------------------------------------------------------------------------

    def _handle(self, entry: Any, outcome: Outcome) -> bool:
        """Apply one send outcome to the spool; True if the report left the spool."""
        if outcome.kind == DELIVERED:
            self.spool.delivered(entry)
            self.stats["delivered"] += 1
            if outcome.duplicate:
                self.stats["duplicates"] += 1
                log.info("report %s was already delivered (duplicate)", entry.seq)
            return True
        if outcome.kind == REFUSED:
            self.spool.refuse(entry)
            self.stats["refused"] += 1
            log.error(
                "report %s refused by the platform (HTTP %s), dropped: %s", entry.seq, outcome.status, outcome.detail
            )
            return True
        self.stats["failures"] += 1
        return False

    def drain(self, until: float | None = None) -> Outcome | None:
        """Send spooled reports oldest-first until empty, a failure (returned), a stop, or `until` on the clock."""
        if self.client is None:
            return None
        while not self.stopping:
            entry = self.spool.oldest()
            if entry is None:
                return None
            try:
                body = entry.read()
            except OSError as exc:
                log.error("spooled report %s unreadable (%s), dropped", entry.seq, exc)
                self.spool.refuse(entry)
                continue
            outcome = self.client.send_report(body)
            if not self._handle(entry, outcome):
                return outcome
            if until is not None and self.clock() >= until:
                return None
        return None

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self, duration: float | None = None) -> None:
        start = self.clock()
        end = start + duration if duration is not None else math.inf
        slot = 0
        next_collect = start
        next_send = start
        while not self.stopping:
            now = self.clock()
            if now >= end:
                break
            if now >= next_collect:
                self.collect_once()
                # The next slot on the fixed grid that is still ahead (slots missed while busy are skipped).
                slot = max(slot + 1, math.floor((self.clock() - start) / self.interval) + 1)
                next_collect = start + slot * self.interval
            silent = self.collector.silent()
            if len(self.spool) and not silent and self.clock() >= next_send:
                delivered = self.stats["delivered"]
                failure = self.drain(until=next_collect)
                if failure is not None and self.stats["delivered"] > delivered:
                    # The platform took reports before this failure (a 429 in the catch-up after an outage): it is
                    # back, so the back-off starts again rather than waiting out the outage's long delays.
                    self.attempt = 0
                if failure is not None:
                    delay = max(MIN_RETRY_S, self.backoff.delay(self.attempt, failure.retry_after))
                    level = logging.WARNING if self.attempt < 3 else logging.DEBUG
                    log.log(
                        level,
                        "platform unreachable (%s%s); %s report(s) spooled, retrying in %.1f s",
                        f"HTTP {failure.status}: " if failure.status else "",
                        failure.detail[:200],
                        len(self.spool),
                        delay,
                    )
                    self.attempt += 1
                    next_send = self.clock() + delay
                else:
                    if self.attempt:
                        log.info("platform reachable again after %s failed attempt(s)", self.attempt)
                    self.attempt = 0
                    if self.send_every is not None and not len(self.spool):
                        next_send = self.clock() + self.send_every
            wake = min(next_collect, end)
            if len(self.spool) and not silent:
                wake = min(wake, max(next_send, self.clock()))
            pause = wake - self.clock()
            if pause > 0:
                self._wait(pause)
