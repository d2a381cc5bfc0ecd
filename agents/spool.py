"""A bounded on-disk spool of reports, oldest first out, that survives a restart of the agent.

Layout of the spool directory:

    state.json                     {"last_seq", "last_sent_seq", "last_sent_at", "dropped", "refused"}
    00000000001732847000.json      one file per report, named by its zero-padded seq (so names sort in seq order)

- Every write is atomic and durable: a temporary file in the same directory, `fsync`, `os.replace`, then an `fsync`
  of the directory. A crash leaves either the old file or the new one, never half of one; stray temporaries are
  removed at open.
- `seq` always increases, across restarts too: the next seq is persisted in the state file before the report that
  uses it is written. A fresh spool (no state file) starts at the current unix time in seconds, so even a wiped spool
  directory continues above every seq it ever sent, as long as reports are at most one a second.
- The spool is bounded in bytes (default 64 MiB, about 6 days of 8-GPU reports at 10 s). Over the bound, the oldest
  reports are dropped first and counted in `dropped`; the newest report is always kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("suanli.agent.spool")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
STATE_FILE = "state.json"
_REPORT_RE = re.compile(r"^(\d{20})\.json$")


@dataclass(frozen=True)
class Spooled:
    seq: int
    path: str
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.read()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically and durably (temp file in the same directory, fsync, replace, fsync dir)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


class Spool:
    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES, clock: Any = time.time):
        self.directory = directory
        self.max_bytes = max_bytes
        self.clock = clock
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._state = self._load_state()
        self._entries: list[Spooled] = []
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(full)
                continue
            match = _REPORT_RE.match(name)
            if match:
                self._entries.append(Spooled(int(match[1]), full, os.path.getsize(full)))
        if self._entries and self._entries[-1].seq > self._state["last_seq"]:
            # A report written after a state file that was lost: never reuse its seq.
            self._state["last_seq"] = self._entries[-1].seq
        self._bytes = sum(e.size for e in self._entries)

    # -- state ----------------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        path = os.path.join(self.directory, STATE_FILE)
        state: dict[str, Any] = {
            "last_seq": None,
            "last_sent_seq": None,
            "last_sent_at": None,
            "dropped": 0,
            "refused": 0,
        }
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = json.load(fh)
            if isinstance(loaded, dict):
                state.update({k: loaded[k] for k in state if k in loaded})
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("spool state %s unreadable (%s); continuing from the reports on disk and the clock", path, exc)
        if not isinstance(state["last_seq"], int):
            state["last_seq"] = int(self.clock()) - 1
        return state

    def _save_state(self) -> None:
        atomic_write(os.path.join(self.directory, STATE_FILE), json.dumps(self._state, sort_keys=True).encode())

    @property
    def last_seq(self) -> int:
        return int(self._state["last_seq"])

    @property
    def last_sent_seq(self) -> int | None:
        return self._state["last_sent_seq"]

    @property
    def last_sent_at(self) -> float | None:
        return self._state["last_sent_at"]

    @property
    def dropped(self) -> int:
        return int(self._state["dropped"])

    @property
    def refused(self) -> int:
        return int(self._state["refused"])

    def peek_seq(self) -> int:
        """The seq the next report will get (not reserved)."""
        return self.last_seq + 1

    def next_seq(self) -> int:
        """Reserve and persist the next seq."""
        self._state["last_seq"] = self.last_seq + 1
        self._save_state()
        return self.last_seq

    # -- reports --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, seq: int, body: bytes) -> None:
        """Store one report; drop the oldest while the spool is over its byte bound (never the one just stored)."""
        if self._entries and seq <= self._entries[-1].seq:
            raise ValueError(f"seq {seq} is not above the newest spooled seq {self._entries[-1].seq}")
        path = os.path.join(self.directory, f"{seq:020d}.json")
        atomic_write(path, body)
        self._entries.append(Spooled(seq, path, len(body)))
        self._bytes += len(body)
        dropped = 0
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._remove(self._entries[0])
            dropped += 1
        if dropped:
            self._state["dropped"] = self.dropped + dropped
            self._save_state()
            log.warning("spool over %s bytes: dropped the %s oldest report(s)", self.max_bytes, dropped)

    def oldest(self) -> Spooled | None:
        return self._entries[0] if self._entries else None

    def _remove(self, entry: Spooled) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
        self._entries.remove(entry)
        self._bytes -= entry.size

    def delivered(self, entry: Spooled) -> None:
        """The platform has the report (accepted or a duplicate): forget it, note the time."""
        self._remove(entry)
        self._state["last_sent_seq"] = entry.seq
        self._state["last_sent_at"] = self.clock()
        self._save_state()

    def refuse(self, entry: Spooled) -> None:
        """The platform refused the report for good (a 4xx): forget it, count it."""
        self._remove(entry)
        self._state["refused"] = self.refused + 1
        self._save_state()

    def status(self) -> dict[str, Any]:
        return {
            "depth": len(self),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_seq": self._entries[0].seq if self._entries else None,
            **self._state,
        }


def read_status(directory: str) -> dict[str, Any] | None:
    """The spool's status without creating anything (for `suanli-agent status`); None if there is no spool."""
    if not os.path.isdir(directory):
        return None
    reports = [n for n in os.listdir(directory) if _REPORT_RE.match(n)]
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
    return {
        "depth": len(reports),
        "bytes": sum(os.path.getsize(os.path.join(directory, n)) for n in reports),
        "last_seq": state.get("last_seq"),
        "last_sent_seq": state.get("last_sent_seq"),
        "last_sent_at": state.get("last_sent_at"),
        "dropped": state.get("dropped", 0),
        "refused": state.get("refused", 0),
    }
