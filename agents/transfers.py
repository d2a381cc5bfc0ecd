"""Volume moves on the agent's side (issue 16): copy a volume to another server through the platform (agents
reach only the platform, never each other).

The desired state lists, at its top level, `volume_transfers_out` (`[{"move", "volume", "chunk_bytes"}]`: this
server is the source) and `volume_transfers_in` (`[{"move", "volume", "size_gb", "owner"}]`: it is the target; the
volume is among the desired `volumes` too, so the runtime's `Volumes` makes it). The reconciler hands the desired
state to `Transfers.sync` every pass; each move listed gets a worker thread, and a move no longer listed (switched,
cancelled, failed) is let go.

- Source (`_send`): once the volume is ready here, a tar of its directory (sorted, so the same files make the same
  stream) is cut into chunks of `chunk_bytes`, each PUT signed with its sha256 to
  `/api/v1/agent/volume-transfers/{move}/chunks/{n}/`; then `sent/` with the count, the bytes and the sha256 of the
  whole stream. After a restart it asks where the platform is (`transfer_status`) and sends from there (the stream
  is made again and the chunks before are only hashed); a stream that came out otherwise is answered
  `transfer_restart` and sent again from chunk 0. A chunk that gets no answer is retried (the same chunk sent twice
  is harmless).
- Target (`_receive`): once the volume is made here, the chunks are read in order as they are staged (GET, each
  checked against its sha256), unpacked as they come into the volume's directory (emptied first: a fresh volume
  holds only this copy) with a filter that keeps every member inside it (no absolute paths, no `..`, no writing
  through a link, no device files, no set-uid bits); then `received/` with the bytes and the sha256 read, on which
  the platform switches the volume here. After a restart, or a copy sent again, it starts from chunk 0.
- A side that cannot go on (its volume failed or is missing here) says so (`failed/`) and the move fails.

The simulated runtime's volumes hold nothing on disk: the source sends the tar of an empty directory and the
target checks it and unpacks nothing, so the platform's side of a move runs the same on simulated servers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.runtime.volumes import FAILED, READY, Volumes

log = logging.getLogger("suanli.agent.transfers")

PATH = "/api/v1/agent/volume-transfers/{move}/"
CHUNK_MAX = 1 << 20
WAIT_S = 0.5  # between polls for a chunk not staged yet, or for the volume to be ready
RETRY_MAX_S = 30.0
VOLUME_WAIT_S = 600.0  # a volume not ready here after this long fails the move


class Abort(Exception):
    """The move is over on the platform (switched, cancelled, failed) or the agent lets it go."""


class Restart(Exception):
    """The platform asks for the copy from the start (the stream changed, or chunks were discarded)."""


@dataclass(frozen=True)
class TransferItem:
    move: int
    volume: int
    direction: str  # "out" (source) or "in" (target)
    chunk_bytes: int = CHUNK_MAX


def parse(raw: Any) -> dict[int, TransferItem]:
    """The transfers of a desired state (its raw JSON object), by move id; entries of another shape are left out."""
    found: dict[int, TransferItem] = {}
    if not isinstance(raw, dict):
        return found
    for key, direction in (("volume_transfers_out", "out"), ("volume_transfers_in", "in")):
        items = raw.get(key)
        for item in items if isinstance(items, list) else []:
            try:
                move, volume = int(item["move"]), int(item["volume"])
                size = int(item.get("chunk_bytes") or CHUNK_MAX)
            except (KeyError, TypeError, ValueError):
                continue
            if move > 0 and volume > 0:
                found[move] = TransferItem(move, volume, direction, max(1, min(size, CHUNK_MAX)))
    return found


class Transfers:
    """The workers of this server's volume moves (see the module docstring)."""

    def __init__(self, client: Any, volumes: Volumes, *, sleep: Callable[[float], Any] | None = None):
        self.client = client
        self.volumes = volumes
        self._lock = threading.Lock()
        self._workers: dict[int, tuple[TransferItem, threading.Thread, threading.Event]] = {}
        self._finished: set[int] = set()  # moves whose worker finished its side (not started again)
        self._sleep = sleep

    def sync(self, raw_desired: Any) -> None:
        wanted = parse(raw_desired)
        with self._lock:
            for move, (item, _thread, stop) in list(self._workers.items()):
                if move not in wanted:
                    stop.set()
                    del self._workers[move]
                    log.info("move %s: no longer listed; its %s worker ends", move, item.direction)
            self._finished &= set(wanted)
            for move, item in wanted.items():
                if move in self._workers or move in self._finished:
                    continue
                stop = threading.Event()
                work = self._send if item.direction == "out" else self._receive
                thread = threading.Thread(
                    target=self._run, args=(item, work, stop), name=f"move-{move}-{item.direction}", daemon=True
                )
                self._workers[move] = (item, thread, stop)
                thread.start()

    def active(self) -> list[int]:
        with self._lock:
            return sorted(self._workers)

    def stop(self) -> None:
        with self._lock:
            for _item, _thread, stop in self._workers.values():
                stop.set()

    def wait(self, timeout: float | None = None) -> None:
        with self._lock:
            threads = [thread for _item, thread, _stop in self._workers.values()]
        for thread in threads:
            thread.join(timeout)

    # -- workers ------------------------------------------------------------------------------------------------

    def _run(self, item: TransferItem, work: Callable[[TransferItem, threading.Event], None], stop: threading.Event):
        try:
            while not stop.is_set():
                try:
                    work(item, stop)
                    break
                except Restart as exc:
                    log.info("move %s: starting the copy over (%s)", item.move, exc)
        except Abort as exc:
            log.info("move %s: %s worker ends (%s)", item.move, item.direction, exc)
        except Exception:  # a bug in one move must not end the agent; the move is retried on the next listing
            log.exception("move %s: the %s worker failed", item.move, item.direction)
            with self._lock:
                self._workers.pop(item.move, None)
            return
        with self._lock:
            self._finished.add(item.move)
            self._workers.pop(item.move, None)

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif stop.wait(seconds):
            raise Abort("the agent let it go")

    def _request(
        self, stop: threading.Event, method: str, path: str, body: bytes = b"", headers: dict | None = None
    ) -> Any:
        """A signed request, retried with back-off while there is no answer, a 5xx or a 429; the answer."""
        from agents.client import TransportError

        delay = WAIT_S
        while True:
            if stop.is_set():
                raise Abort("the agent let it go")
            try:
                resp = self.client.signed(method, path, body, headers)
            except TransportError as exc:
                log.warning("move: %s %s got no answer (%s); retrying", method, path, exc)
            else:
                if resp.status < 500 and resp.status != 429:
                    return resp
                log.warning("move: %s %s answered %s; retrying", method, path, resp.status)
            self._wait(stop, delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _status(self, item: TransferItem, stop: threading.Event) -> dict[str, Any]:
        resp = self._request(stop, "GET", PATH.format(move=item.move))
        payload = resp.json()
        if resp.status == 404 or not isinstance(payload, dict):
            raise Abort(f"the platform does not know it (HTTP {resp.status})")
        if not payload.get("live"):
            raise Abort(f"it is {payload.get('state')}")
        return payload

    def _failed(self, item: TransferItem, stop: threading.Event, message: str) -> None:
        log.error("move %s: %s", item.move, message)
        body = json.dumps({"message": message[:900]}).encode()
        self._request(stop, "POST", PATH.format(move=item.move) + "failed/", body, {"Content-Type": "application/json"})
        raise Abort(f"failed: {message}")

    def _volume_dir(self, item: TransferItem, stop: threading.Event) -> str | None:
        """The volume's directory here once it is ready (None for volumes that hold nothing on disk: the simulated
        runtime's); fails the move when the volume failed or is not made in time."""
        deadline = time.monotonic() + VOLUME_WAIT_S
        failing_since: float | None = None
        while True:
            status = self.volumes.statuses().get(item.volume)
            if status is not None and status.state == READY:
                path = self.volumes.path(item.volume)
                if path is not None or self.volumes.name == "simulated":
                    return path
            if status is not None and status.state == FAILED:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > 30:  # the store retries a failure itself; 30 s of it is enough
                    self._failed(item, stop, f"volume {item.volume}: {status.message or 'failed'}")
            else:
                failing_since = None
            if time.monotonic() > deadline:
                state = status.state if status is not None else "not here"
                self._failed(item, stop, f"volume {item.volume} is not ready on this server ({state})")
            self._wait(stop, WAIT_S)

    # -- the source ---------------------------------------------------------------------------------------------

    def _send(self, item: TransferItem, stop: threading.Event) -> None:
        directory = self._volume_dir(item, stop)
        status = self._status(item, stop)
        if status.get("sent"):
            return  # all sent before a restart: the target goes on
        resume = int(status.get("chunks") or 0)
        size = int(status.get("chunk_bytes") or item.chunk_bytes)
        log.info("move %s: sending volume %s from chunk %s (chunks of %s bytes)", item.move, item.volume, resume, size)
        writer = _ChunkWriter(size, lambda n, data: self._put(item, stop, n, data, resume))
        with tempfile.TemporaryDirectory(prefix="suanli-move-") as empty:
            write_tar(directory or empty, writer, stop)
        writer.close()
        body = json.dumps({"chunks": writer.count, "bytes": writer.total, "sha256": writer.digest.hexdigest()})
        resp = self._request(
            stop, "POST", PATH.format(move=item.move) + "sent/", body.encode(), {"Content-Type": "application/json"}
        )
        code = _code(resp)
        if resp.status == 409 and code == "transfer_restart":
            raise Restart("the platform's copy does not match the stream")
        if resp.status >= 400:
            raise Abort(f"sent: HTTP {resp.status} {code}")
        log.info("move %s: sent %s bytes in %s chunks", item.move, writer.total, writer.count)

    def _put(self, item: TransferItem, stop: threading.Event, n: int, data: bytes, resume: int) -> None:
        if n < resume:
            return  # staged before a restart (the whole stream's digest tells if it came out the same)
        digest = hashlib.sha256(data).hexdigest()
        path = PATH.format(move=item.move) + f"chunks/{n}/"
        headers = {"Content-Type": "application/octet-stream", "X-Chunk-SHA256": digest}
        resp = self._request(stop, "PUT", path, data, headers)
        if resp.status == 200:
            return
        code = _code(resp)
        if resp.status == 409 and code in ("chunk_out_of_order", "chunk_differs", "transfer_ended"):
            raise Restart(f"chunk {n}: {code}")
        raise Abort(f"chunk {n}: HTTP {resp.status} {code}")

    # -- the target ---------------------------------------------------------------------------------------------

    def _receive(self, item: TransferItem, stop: threading.Event) -> None:
        directory = self._volume_dir(item, stop)
        self._status(item, stop)
        reader = _ChunkReader(self, item, stop)
        if directory is not None:
            _empty(directory)
        log.info("move %s: receiving volume %s into %s", item.move, item.volume, directory or "(nothing on disk)")
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                if stop.is_set():
                    raise Abort("the agent let it go")
                if directory is None:
                    continue
                clean = safe_member(member, directory)
                if clean is not None:
                    archive.extract(clean, directory, set_attrs=True, numeric_owner=True, filter="fully_trusted")
        while reader.read(CHUNK_MAX):  # the end-of-archive blocks and padding: the digest covers every byte
            pass
        if directory is not None:
            os.sync()
        body = json.dumps({"bytes": reader.total, "sha256": reader.digest.hexdigest()}).encode()
        resp = self._request(
            stop, "POST", PATH.format(move=item.move) + "received/", body, {"Content-Type": "application/json"}
        )
        code = _code(resp)
        if resp.status == 409 and code == "transfer_incomplete":
            raise Restart("the platform has another stream than the one read")
        if resp.status >= 400:
            raise Abort(f"received: HTTP {resp.status} {code}")
        log.info("move %s: received %s bytes; volume %s is on this server now", item.move, reader.total, item.volume)


def _code(resp: Any) -> str:
    payload = resp.json()
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("code") or "")
    return ""


class _ChunkWriter:
    """A write-only file object that cuts what tarfile writes into chunks of `size` and hands each to `emit(n,
    data)`, hashing the whole stream."""

    def __init__(self, size: int, emit: Callable[[int, bytes], None]):
        self.size, self.emit = size, emit
        self.buffer = bytearray()
        self.count = 0
        self.total = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= self.size:
            self._flush(bytes(self.buffer[: self.size]))
            del self.buffer[: self.size]
        return len(data)

    def _flush(self, data: bytes) -> None:
        self.digest.update(data)
        self.total += len(data)
        self.emit(self.count, data)
        self.count += 1

    def close(self) -> None:
        if self.buffer:
            self._flush(bytes(self.buffer))
            self.buffer.clear()


class _ChunkReader:
    """A read-only file object over a move's staged chunks, read in order as they are staged (checked against their
    sha256), hashing the whole stream; EOF when the source has sent all and every chunk is read."""

    def __init__(self, transfers: Transfers, item: TransferItem, stop: threading.Event):
        self.transfers, self.item, self.stop = transfers, item, stop
        self.next = 0
        self.buffer = b""
        self.total = 0
        self.digest = hashlib.sha256()
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        while not self.eof and (size < 0 or len(self.buffer) < size):
            self._fetch()
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fetch(self) -> None:
        path = PATH.format(move=self.item.move) + f"chunks/{self.next}/"
        resp = self.transfers._request(self.stop, "GET", path)
        if resp.status == 200:
            if hashlib.sha256(resp.body).hexdigest() != resp.headers.get("X-Chunk-SHA256", ""):
                self.transfers._wait(self.stop, WAIT_S)
                return  # a damaged answer: read the chunk again
            self.buffer += resp.body
            self.digest.update(resp.body)
            self.total += len(resp.body)
            self.next += 1
            return
        code = _code(resp)
        if resp.status == 409 and code == "chunk_not_ready":
            status = self.transfers._status(self.item, self.stop)
            if status.get("sent") and self.next >= int(status.get("chunks") or 0):
                self.eof = True
                return
            if int(status.get("chunks") or 0) < self.next:
                raise Restart("the source is sending the copy again")
            self.transfers._wait(self.stop, WAIT_S)
            return
        raise Abort(f"chunk {self.next}: HTTP {resp.status} {code}")


def write_tar(directory: str, fileobj: Any, stop: threading.Event | None = None) -> None:
    """A tar stream of everything under `directory` (names relative to it), in sorted order so that the same files
    make the same bytes: directories, regular files, symbolic links and hard links (sockets, pipes and devices are
    left out; none belong in a volume's data)."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for root, dirs, files in os.walk(directory, followlinks=False):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                if stop is not None and stop.is_set():
                    raise Abort("the agent let it go")
                path = os.path.join(root, name)
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    continue
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    continue
                info = archive.gettarinfo(path, arcname=os.path.relpath(path, directory))
                if info.isreg():
                    with open(path, "rb") as fh:
                        archive.addfile(info, fh)
                else:
                    archive.addfile(info)


def safe_member(member: tarfile.TarInfo, directory: str) -> tarfile.TarInfo | None:
    """`member` as it may be unpacked into `directory`, or None to leave it out: directories, regular files,
    symbolic links (their target kept as the customer made it: the container resolves it, never this agent) and
    hard links to members inside; no absolute or escaping names, nothing written through a link (tarfile's "tar"
    filter checks the real path), no set-uid or set-gid bits."""
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        return None
    try:
        if member.islnk():
            clean = tarfile.data_filter(member, directory)  # a hard link's target must be inside
        else:
            clean = tarfile.tar_filter(member, directory)
    except tarfile.FilterError as exc:
        log.warning("left out of the copy: %s (%s)", member.name[:200], exc)
        return None
    mode = member.mode & 0o1777  # the customer's permissions, without set-uid and set-gid
    return clean.replace(mode=mode, uid=member.uid, gid=member.gid, deep=False)


def _empty(directory: str) -> None:
    """Remove everything in `directory` but ext4's lost+found (a fresh volume holds only this copy)."""
    for name in os.listdir(directory):
        if name == "lost+found":
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
