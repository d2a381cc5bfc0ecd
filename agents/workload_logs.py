"""The tails of the workloads' output, sent to the platform so their customers can read them
(`GET /api/v1/leases/{id}/workloads/{wid}/logs/`, `suanli logs`).

Every `every` seconds (30 by default, much slower than the reports), `LogShipper.ship` asks the runtime for the
end of each workload's output (`Runtime.logs`, at most LOG_TAIL_BYTES) and POSTs those that changed since the last
one the platform took to `/api/v1/agent/workload-logs/`, signed like a report, in requests of at most
MAX_REQUEST_BYTES. The output is sent as the container printed it, decoded as UTF-8 (bad bytes replaced): the agent
adds nothing to it (no environment, no secret of the spec). A failed POST is tried again at the next turn; the
platform keeps only the latest tail per workload, so nothing is owed once a newer one went through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("suanli.agent.workloads")

LOGS_PATH = "/api/v1/agent/workload-logs/"
LOG_TAIL_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 768 * 1024  # under the platform's 1 MiB body limit, JSON escapes included
MAX_ENTRIES = 64


def decode_tail(data: bytes, limit: int = LOG_TAIL_BYTES) -> tuple[str, bool]:
    """The last `limit` bytes of `data` as text (a cut character dropped, bad bytes replaced, starting at a line
    when one begins near the cut), and whether anything was cut."""
    cut = len(data) > limit
    data = data[-limit:]
    if cut:
        while data and (data[0] & 0xC0) == 0x80:  # a UTF-8 continuation byte: the rest of a cut character
            data = data[1:]
        newline = data.find(b"\n")
        if 0 <= newline < 4096:
            data = data[newline + 1 :]
    return data.decode("utf-8", "replace"), cut


class LogShipper:
    def __init__(
        self,
        client: Any,
        runtime: Any,
        *,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.client = client
        self.runtime = runtime
        self.every = float(every)
        self.clock = clock
        self.wall = wall
        self.next_at = clock()
        self.sent: dict[int, str] = {}  # workload id -> digest of the tail the platform took

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def ship(self, workload_ids: Iterable[int], *, force: bool = False) -> int:
        """Send the changed tails of `workload_ids` when due (or `force`); returns how many the platform took."""
        if not force and not self.due():
            return 0
        self.next_at = self.clock() + self.every
        ids = sorted(set(workload_ids))
        for gone in [w for w in self.sent if w not in ids]:
            del self.sent[gone]
        changed: list[tuple[dict[str, Any], str]] = []
        for workload_id in ids:
            try:
                data = self.runtime.logs(workload_id, LOG_TAIL_BYTES + 1)  # one byte more tells a cut tail
            except Exception as exc:  # one workload's output must not stop the others'
                log.debug("cannot read the output of workload %s: %s", workload_id, exc)
                continue
            if data is None:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if self.sent.get(workload_id) == digest:
                continue
            text, truncated = decode_tail(data)
            entry = {"id": workload_id, "text": text, "truncated": truncated, "captured_at": self.wall()}
            changed.append((entry, digest))
        taken = 0
        for batch in _batches(changed):
            body = json.dumps({"logs": [entry for entry, _ in batch]}, separators=(",", ":")).encode()
            try:
                resp = self.client.signed("POST", LOGS_PATH, body, {"Content-Type": "application/json"})
            except Exception as exc:  # the platform is unreachable: the next turn tries again
                log.debug("workload output not sent: %s", exc)
                return taken
            if resp.status != 200:
                log.warning("the platform refused workload output: HTTP %s", resp.status)
                return taken
            for entry, digest in batch:
                self.sent[entry["id"]] = digest
            taken += len(batch)
        return taken


def _batches(changed: list[tuple[dict[str, Any], str]]) -> Iterable[list[tuple[dict[str, Any], str]]]:
    batch: list[tuple[dict[str, Any], str]] = []
    size = 0
    for item in changed:
        length = len(json.dumps(item[0]))
        if batch and (size + length > MAX_REQUEST_BYTES or len(batch) >= MAX_ENTRIES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += length
    if batch:
        yield batch
