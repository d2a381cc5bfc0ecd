import json
import os

import pytest

from agents.spool import Spool, read_status


def body(seq: int, size: int = 100) -> bytes:
    return json.dumps({"seq": seq, "pad": "x" * size}).encode()


def test_reports_come_out_oldest_first(tmp_path):
    spool = Spool(str(tmp_path), clock=lambda: 1000.0)
    seqs = [spool.next_seq() for _ in range(5)]
    for seq in seqs:
        spool.put(seq, body(seq))
    out = []
    while (entry := spool.oldest()) is not None:
        out.append(json.loads(entry.read())["seq"])
        spool.delivered(entry)
    assert out == seqs == sorted(seqs)
    assert spool.last_sent_seq == seqs[-1] and spool.last_sent_at == 1000.0


def test_a_fresh_spool_starts_seq_at_the_unix_time_so_a_wiped_spool_never_reuses_one(tmp_path):
    assert Spool(str(tmp_path / "a"), clock=lambda: 1_800_000_000.9).next_seq() == 1_800_000_000


def test_seq_is_monotonic_across_restarts_and_survives_the_reports(tmp_path):
    spool = Spool(str(tmp_path), clock=lambda: 100.0)
    first = [spool.next_seq() for _ in range(3)]
    for seq in first:
        spool.put(seq, body(seq))
    spool.delivered(spool.oldest())
    del spool
    again = Spool(str(tmp_path), clock=lambda: 50.0)  # even with the clock set back
    assert [e.seq for e in again._entries] == first[1:]
    nxt = again.next_seq()
    assert nxt == first[-1] + 1
    assert Spool(str(tmp_path), clock=lambda: 0.0).next_seq() == nxt + 1


def test_a_report_written_after_a_lost_state_file_is_never_reused(tmp_path):
    spool = Spool(str(tmp_path), clock=lambda: 100.0)
    seq = spool.next_seq()
    spool.put(seq, body(seq))
    os.unlink(tmp_path / "state.json")
    assert Spool(str(tmp_path), clock=lambda: 10.0).next_seq() == seq + 1


def test_the_spool_is_bounded_and_drops_the_oldest_first(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=1000, clock=lambda: 1.0)
    for _ in range(20):
        seq = spool.next_seq()
        spool.put(seq, body(seq))  # ~120 bytes each
    assert spool.bytes <= 1000
    kept = [e.seq for e in spool._entries]
    assert kept == list(range(spool.last_seq - len(kept) + 1, spool.last_seq + 1))
    assert spool.dropped == 20 - len(kept)
    assert Spool(str(tmp_path), max_bytes=1000).dropped == spool.dropped  # the counter survives a restart


def test_the_newest_report_is_kept_even_if_alone_over_the_bound(tmp_path):
    spool = Spool(str(tmp_path), max_bytes=10)
    seq = spool.next_seq()
    spool.put(seq, body(seq))
    assert len(spool) == 1


def test_writes_are_atomic_and_stray_temporaries_are_cleaned_at_open(tmp_path):
    spool = Spool(str(tmp_path))
    seq = spool.next_seq()
    spool.put(seq, body(seq))
    (tmp_path / ".tmp-half-written").write_bytes(b'{"seq": ')
    again = Spool(str(tmp_path))
    assert not (tmp_path / ".tmp-half-written").exists()
    assert [e.seq for e in again._entries] == [seq]
    assert oct(os.stat(again.oldest().path).st_mode & 0o777) == oct(0o600)


def test_a_seq_below_the_newest_is_refused(tmp_path):
    spool = Spool(str(tmp_path))
    seq = spool.next_seq()
    spool.put(seq, body(seq))
    with pytest.raises(ValueError):
        spool.put(seq, body(seq))


def test_refused_reports_are_counted_and_status_reads_without_creating(tmp_path):
    assert read_status(str(tmp_path / "missing")) is None
    spool = Spool(str(tmp_path))
    for _ in range(3):
        seq = spool.next_seq()
        spool.put(seq, body(seq))
    spool.refuse(spool.oldest())
    status = read_status(str(tmp_path))
    assert status["depth"] == 2 and status["refused"] == 1 and status["last_seq"] == spool.last_seq
    assert status["bytes"] == spool.bytes
