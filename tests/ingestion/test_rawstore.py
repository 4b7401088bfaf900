"""The raw store keeps every message byte-exact and makes any later edit visible.

Tamper tests edit segment files directly, the way an attacker or a bad disk
would, using the documented on-disk format parsed here with ``struct`` (not
the store's own parser), then check that ``verify`` names the segment and the
sequence number of the damage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from ingestion.merkle import inclusion_proof, merkle_root, verify_inclusion
from ingestion.rawstore import (
    CorruptTailError,
    DayBusyError,
    ProblemKind,
    RawStore,
    SealedDayError,
    SealError,
    StreamLockedError,
    verify_raw_main,
)
from ingestion.types import RawRef

SEG_HDR = struct.Struct(">8sHHQ32s")
FRAME = struct.Struct(">HIQQ32s32s")
DAY = date(2024, 3, 5)
DAY_NS = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp()) * 1_000_000_000
NS_PER_DAY = 86_400 * 1_000_000_000


def quote(i: int) -> bytes:
    return b'{"e":"bookTicker","u":%d,"s":"BTCUSDT","b":"9735.%02d","B":"1.234","a":"9735.70","A":"0.5"}' % (i, i % 100)


def seg_path(root: Path, day: date, stream: str) -> Path:
    return root / f"{day:%Y/%m/%d}" / f"{stream}.seg"


def rel(day: date, stream: str) -> str:
    return f"{day:%Y/%m/%d}/{stream}.seg"


def frames_of(path: Path) -> list[tuple[int, int, int]]:
    """(offset, end, seq) of every frame, parsed from the documented format."""
    data = path.read_bytes()
    out = []
    off = SEG_HDR.size
    while off < len(data):
        _magic, plen, seq, _recv, _sha, _chain = FRAME.unpack_from(data, off)
        end = off + FRAME.size + plen
        out.append((off, end, seq))
        off = end
    return out


def write_day(root: Path, n: int = 10, stream: str = "sim", day_ns: int = DAY_NS) -> list[bytes]:
    payloads = [quote(i) for i in range(n)]
    with RawStore(root).writer(stream) as w:
        w.append_many(payloads, recv_ns=[day_ns + 1_000 * i for i in range(n)])
    return payloads


def problems_of(root: Path, day: date | None = None) -> list[tuple[str, str, int | None]]:
    report = RawStore(root).verify(day)
    return [(p.kind.value, p.segment, p.seq) for p in report.problems]


def chain_of(stream: str, records: list[tuple[int, int, bytes]]) -> bytes:
    chain = hashlib.sha256(b"first-principle/raw/genesis\x00" + stream.encode()).digest()
    for seq, recv, payload in records:
        chain = hashlib.sha256(
            chain + seq.to_bytes(8, "big") + recv.to_bytes(8, "big") + hashlib.sha256(payload).digest()
        ).digest()
    return chain


# --------------------------------------------------------------------------- intact data


def test_it_reads_back_every_payload_byte_exact_with_hash_and_chain(tmp_path: Path) -> None:
    payloads = write_day(tmp_path, 5)

    records = list(RawStore(tmp_path).read("sim"))

    assert [r.payload for r in records] == payloads
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.recv_ns for r in records] == [DAY_NS + 1_000 * i for i in range(5)]
    assert all(r.sha256 == hashlib.sha256(r.payload).digest() for r in records)
    assert records[-1].chain == chain_of("sim", [(r.seq, r.recv_ns, r.payload) for r in records])
    assert records[0].segment == rel(DAY, "sim")


def test_it_verifies_intact_data_as_ok(tmp_path: Path) -> None:
    write_day(tmp_path, 20)
    write_day(tmp_path, 7, stream="binance")

    report = RawStore(tmp_path).verify()

    assert report.ok, report.problems
    assert report.records == 27
    assert report.segments == 2


def test_it_returns_refs_with_consecutive_seqs(tmp_path: Path) -> None:
    with RawStore(tmp_path).writer("sim") as w:
        one = w.append(b"a", recv_ns=DAY_NS)
        many = w.append_many([b"b", b"c"], recv_ns=DAY_NS + 5)

    assert one == RawRef("sim", 1)
    assert many == [RawRef("sim", 2), RawRef("sim", 3)]
    assert hash(many[0]) == hash(RawRef("sim", 2))


def test_it_reads_from_a_given_seq(tmp_path: Path) -> None:
    write_day(tmp_path, 10)

    seqs = [r.seq for r in RawStore(tmp_path).read("sim", from_seq=7)]

    assert seqs == [7, 8, 9, 10]


# --------------------------------------------------------------------------- tampering


def test_it_names_the_seq_of_a_flipped_payload_byte(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    off, _end, seq = frames_of(path)[4]
    data = bytearray(path.read_bytes())
    data[off + FRAME.size + 3] ^= 0x01
    path.write_bytes(bytes(data))

    assert seq == 5
    assert problems_of(tmp_path) == [("payload_edited", rel(DAY, "sim"), 5)]


def test_it_names_the_seq_of_a_deleted_record(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    off, end, _seq = frames_of(path)[3]
    data = path.read_bytes()
    path.write_bytes(data[:off] + data[end:])

    assert problems_of(tmp_path) == [("record_deleted", rel(DAY, "sim"), 4)]


def test_it_names_the_seq_of_swapped_records(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    fr = frames_of(path)
    (a0, a1, _), (b0, b1, _) = fr[5], fr[6]
    data = path.read_bytes()
    path.write_bytes(data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:])

    # File order is now 1..5, 7, 6, 8..10: record 6 sits after record 7.
    assert problems_of(tmp_path) == [("records_reordered", rel(DAY, "sim"), 6)]


def test_it_names_the_seq_of_an_inserted_copy(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    fr = frames_of(path)
    c0, c1, _ = fr[2]
    _, after, _ = fr[7]
    data = path.read_bytes()
    path.write_bytes(data[:after] + data[c0:c1] + data[after:])

    assert problems_of(tmp_path) == [("record_inserted", rel(DAY, "sim"), 3)]


def test_it_names_a_forged_record_even_when_its_chain_is_rebuilt(tmp_path: Path) -> None:
    payloads = write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    fr = frames_of(path)
    # Forge seq 6 correctly chained from the real record 5 and slip it in before the real 6.
    chain5 = chain_of("sim", [(i + 1, DAY_NS + 1_000 * i, payloads[i]) for i in range(5)])
    forged_payload = b'{"e":"bookTicker","s":"BTCUSDT","b":"1.00","a":"1.01"}'
    digest = hashlib.sha256(forged_payload).digest()
    recv = DAY_NS + 5_000
    chain6 = hashlib.sha256(chain5 + (6).to_bytes(8, "big") + recv.to_bytes(8, "big") + digest).digest()
    forged = FRAME.pack(0xF5A1, len(forged_payload), 6, recv, digest, chain6) + forged_payload
    at = fr[5][0]
    data = path.read_bytes()
    path.write_bytes(data[:at] + forged + data[at:])

    problems = RawStore(tmp_path).verify().problems

    assert [(p.kind, p.seq) for p in problems] == [(ProblemKind.RECORD_INSERTED, 6)]
    assert f"offset {at}" in problems[0].detail


def test_it_names_a_truncated_tail(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    size = path.stat().st_size
    os.truncate(path, size - 10)

    assert problems_of(tmp_path) == [("truncated_tail", rel(DAY, "sim"), 10)]


def test_it_names_a_recv_time_edit_as_a_broken_chain(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    off, _end, _seq = frames_of(path)[1]
    data = bytearray(path.read_bytes())
    data[off + 2 + 4 + 8 + 7] ^= 0x10  # Lowest byte of recv_ns of seq 2.
    path.write_bytes(bytes(data))

    assert problems_of(tmp_path) == [("chain_broken", rel(DAY, "sim"), 2)]


def _seal(root: Path) -> Path:
    RawStore(root).seal_day(DAY)
    return root / f"{DAY:%Y/%m/%d}" / "MANIFEST.json"


def test_it_names_an_edited_manifest(tmp_path: Path) -> None:
    write_day(tmp_path)
    manifest = _seal(tmp_path)
    doc = json.loads(manifest.read_text())
    doc["streams"]["sim"]["last_seq"] = 9
    doc["streams"]["sim"]["merkle_root"] = "00" * 32
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(doc))

    problems = RawStore(tmp_path).verify().problems

    assert {(p.kind, p.segment, p.seq) for p in problems} == {
        (ProblemKind.MANIFEST_MISMATCH, rel(DAY, "sim"), 10),
        (ProblemKind.MANIFEST_MISMATCH, rel(DAY, "sim"), None),
    }
    assert any("merkle_root" in p.detail for p in problems)


def test_it_names_a_sealed_segment_whose_tail_was_cut_at_a_record_boundary(tmp_path: Path) -> None:
    write_day(tmp_path)
    _seal(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    last_off = frames_of(path)[-1][0]
    os.chmod(path, 0o644)
    os.truncate(path, last_off)

    kinds = {(p.kind, p.seq) for p in RawStore(tmp_path).verify().problems}

    assert (ProblemKind.RECORD_DELETED, 10) in kinds
    assert any(k == ProblemKind.MANIFEST_MISMATCH for k, _ in kinds)


def test_it_flags_an_edit_of_a_sealed_segment_against_the_manifest(tmp_path: Path) -> None:
    write_day(tmp_path)
    _seal(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    off = frames_of(path)[0][0]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[off + FRAME.size] ^= 0xFF
    path.write_bytes(bytes(data))

    problems = RawStore(tmp_path).verify().problems

    assert ("payload_edited", 1) in {(p.kind.value, p.seq) for p in problems}
    assert any(p.kind == ProblemKind.MANIFEST_MISMATCH and "file_sha256" in p.detail for p in problems)


# --------------------------------------------------------------------------- writers


def test_it_continues_seq_and_chain_when_a_writer_reopens(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append_many([b"a", b"b"], recv_ns=DAY_NS)
    with store.writer("sim") as w:
        ref = w.append(b"c", recv_ns=DAY_NS + 1)

    records = list(store.read("sim"))
    assert ref == RawRef("sim", 3)
    assert records[-1].chain == chain_of("sim", [(1, DAY_NS, b"a"), (2, DAY_NS, b"b"), (3, DAY_NS + 1, b"c")])
    assert store.verify().ok


def test_it_refuses_a_second_writer_on_one_stream(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    first = store.writer("sim")
    with pytest.raises(StreamLockedError, match="already has a writer"):
        store.writer("sim")
    other = store.writer("binance")  # Other streams are independent.
    first.close()
    other.close()
    with store.writer("sim") as again:
        assert again.append(b"x", recv_ns=DAY_NS) == RawRef("sim", 1)


def test_it_refuses_a_writer_in_another_process(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "from ingestion.rawstore import RawStore, StreamLockedError\n"
        "try:\n"
        f"    RawStore({str(tmp_path)!r}).writer('binance')\n"
        "except StreamLockedError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    with RawStore(tmp_path).writer("binance"):
        held = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    free = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)

    assert held.returncode == 3
    assert "already has a writer" in held.stdout
    assert free.returncode == 0, free.stderr


def test_it_refuses_to_append_to_a_sealed_day(tmp_path: Path) -> None:
    write_day(tmp_path)
    _seal(tmp_path)
    with RawStore(tmp_path).writer("sim") as w, pytest.raises(SealedDayError, match="sealed"):
        w.append(b"late", recv_ns=DAY_NS + 10)
    assert stat.S_IMODE(seg_path(tmp_path, DAY, "sim").stat().st_mode) == 0o444
    with RawStore(tmp_path).writer("new-stream") as w, pytest.raises(SealedDayError):
        w.append(b"late", recv_ns=DAY_NS + 10)


def test_it_refuses_to_seal_a_day_a_writer_still_has_open(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append(b"a", recv_ns=DAY_NS)
        with pytest.raises(DayBusyError):
            store.seal_day(DAY)
        w.append(b"b", recv_ns=DAY_NS + NS_PER_DAY)  # Moving to the next day leaves the first.
        manifest = store.seal_day(DAY)
    assert manifest.streams["sim"].last_seq == 1


def test_it_refuses_to_seal_a_day_with_problems(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    data = bytearray(path.read_bytes())
    data[frames_of(path)[2][0] + FRAME.size] ^= 1
    path.write_bytes(bytes(data))

    with pytest.raises(SealError) as info:
        RawStore(tmp_path).seal_day(DAY)
    assert [(p.kind, p.seq) for p in info.value.problems] == [(ProblemKind.PAYLOAD_EDITED, 3)]
    assert not (tmp_path / f"{DAY:%Y/%m/%d}" / "MANIFEST.json").exists()


def test_it_refuses_to_extend_a_partial_tail_until_repaired(tmp_path: Path) -> None:
    write_day(tmp_path, 3)
    path = seg_path(tmp_path, DAY, "sim")
    intact = path.stat().st_size
    with open(path, "ab") as fh:  # A crash in the middle of writing frame 4.
        fh.write(FRAME.pack(0xF5A1, 100, 4, DAY_NS, b"\0" * 32, b"\0" * 32) + b"{partial")
    store = RawStore(tmp_path)
    with pytest.raises(CorruptTailError, match="repair_tail"):
        store.writer("sim")

    removed = store.repair_tail("sim")

    assert removed == FRAME.size + len(b"{partial")
    assert path.stat().st_size == intact
    with store.writer("sim") as w:
        assert w.append(b"next", recv_ns=DAY_NS + 5) == RawRef("sim", 4)
    assert store.verify().ok


def test_it_refuses_to_extend_a_tail_whose_last_record_fails_its_hash(tmp_path: Path) -> None:
    write_day(tmp_path, 3)
    path = seg_path(tmp_path, DAY, "sim")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    store = RawStore(tmp_path)

    with pytest.raises(CorruptTailError, match="seq 3"):
        store.writer("sim")
    assert store.repair_tail("sim") == 0  # A complete but edited record is not a crash leftover.


# --------------------------------------------------------------------------- days


def test_it_splits_a_batch_at_midnight_and_chains_across_days(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    stamps = [DAY_NS + NS_PER_DAY - 2, DAY_NS + NS_PER_DAY - 1, DAY_NS + NS_PER_DAY, DAY_NS + NS_PER_DAY + 1]
    payloads = [b"p0", b"p1", b"p2", b"p3"]
    with store.writer("sim") as w:
        w.append_many(payloads, recv_ns=stamps)

    nxt = DAY + timedelta(days=1)
    assert [r.seq for r in store.read("sim", day=DAY)] == [1, 2]
    assert [r.seq for r in store.read("sim", day=nxt)] == [3, 4]
    header = SEG_HDR.unpack_from(seg_path(tmp_path, nxt, "sim").read_bytes())
    assert header[3] == 3
    assert header[4] == chain_of("sim", [(1, stamps[0], b"p0"), (2, stamps[1], b"p1")])
    assert store.days() == [DAY, nxt]
    assert store.verify().ok
    assert store.verify(nxt).ok


def test_it_detects_a_record_cut_from_the_end_of_the_previous_day(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append_many([b"a", b"b", b"c"], recv_ns=DAY_NS)
        w.append_many([b"d", b"e"], recv_ns=DAY_NS + NS_PER_DAY)
    path = seg_path(tmp_path, DAY, "sim")
    os.truncate(path, frames_of(path)[-1][0])  # Cleanly remove seq 3, the last record of the day.

    assert problems_of(tmp_path) == [("record_deleted", rel(DAY, "sim"), 3)]
    assert problems_of(tmp_path, DAY + timedelta(days=1)) == [("record_deleted", rel(DAY, "sim"), 3)]


def test_it_detects_a_next_day_segment_rebuilt_on_a_forged_chain(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append_many([b"a", b"b"], recv_ns=DAY_NS)
        w.append_many([b"c"], recv_ns=DAY_NS + NS_PER_DAY)
    nxt = DAY + timedelta(days=1)
    # Rewrite the next day as a self-consistent segment that starts from a made-up chain head:
    # only the link to the previous day can tell.
    fake_start = hashlib.sha256(b"made up").digest()
    recv = DAY_NS + NS_PER_DAY
    digest = hashlib.sha256(b"c").digest()
    chain3 = hashlib.sha256(fake_start + (3).to_bytes(8, "big") + recv.to_bytes(8, "big") + digest).digest()
    seg_path(tmp_path, nxt, "sim").write_bytes(
        SEG_HDR.pack(b"FPRAWSEG", 1, 0, 3, fake_start) + FRAME.pack(0xF5A1, 1, 3, recv, digest, chain3) + b"c"
    )

    assert problems_of(tmp_path) == [("chain_broken", rel(nxt, "sim"), 3)]
    assert problems_of(tmp_path, nxt) == [("chain_broken", rel(nxt, "sim"), 3)]
    assert problems_of(tmp_path, DAY) == []


def test_it_keeps_a_record_whose_clock_stepped_back_in_the_current_day(tmp_path: Path) -> None:
    store = RawStore(tmp_path)
    with store.writer("sim") as w:
        w.append(b"a", recv_ns=DAY_NS + NS_PER_DAY + 5)
        w.append(b"b", recv_ns=DAY_NS + NS_PER_DAY - 5)  # Clock stepped back over midnight.

    assert store.days() == [DAY + timedelta(days=1)]
    assert store.verify().ok


# --------------------------------------------------------------------------- manifest and merkle


def _rfc6962(leaves: list[bytes]) -> bytes:
    """Independent recursive RFC 6962 MTH, straight from the definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962(leaves[:k]) + _rfc6962(leaves[k:])).digest()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_it_computes_the_rfc6962_root_and_proofs(n: int) -> None:
    leaves = [f"leaf-{i}".encode() for i in range(n)]
    root = merkle_root(leaves)
    assert root == _rfc6962(leaves)
    for i in range(n):
        assert verify_inclusion(leaves[i], i, n, inclusion_proof(leaves, i), root)
        assert not verify_inclusion(b"other", i, n, inclusion_proof(leaves, i), root)


def test_it_writes_a_manifest_that_matches_the_segment(tmp_path: Path) -> None:
    payloads = write_day(tmp_path, 6)
    manifest = RawStore(tmp_path).seal_day(DAY)

    doc = json.loads((tmp_path / f"{DAY:%Y/%m/%d}" / "MANIFEST.json").read_text())
    sm = doc["streams"]["sim"]
    path = seg_path(tmp_path, DAY, "sim")
    leaves = [
        (i + 1).to_bytes(8, "big") + (DAY_NS + 1_000 * i).to_bytes(8, "big") + hashlib.sha256(p).digest()
        for i, p in enumerate(payloads)
    ]
    assert (sm["first_seq"], sm["last_seq"], sm["count"]) == (1, 6, 6)
    assert sm["bytes"] == path.stat().st_size
    assert sm["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sm["chain_start"] == hashlib.sha256(b"first-principle/raw/genesis\x00sim").hexdigest()
    assert sm["chain_end"] == chain_of("sim", [(i + 1, DAY_NS + 1_000 * i, p) for i, p in enumerate(payloads)]).hex()
    assert sm["merkle_root"] == _rfc6962(leaves).hex()
    assert manifest.streams["sim"].merkle_root == sm["merkle_root"]
    assert stat.S_IMODE((tmp_path / f"{DAY:%Y/%m/%d}" / "MANIFEST.json").stat().st_mode) == 0o444
    assert RawStore(tmp_path).verify().ok


# --------------------------------------------------------------------------- command


def test_verify_raw_main_exits_0_on_intact_data(tmp_path: Path) -> None:
    write_day(tmp_path)
    out = io.StringIO()

    assert verify_raw_main(tmp_path, None, True, out=out) == 0
    assert out.getvalue().startswith("OK:")


def test_verify_raw_main_prints_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    write_day(tmp_path)
    path = seg_path(tmp_path, DAY, "sim")
    fr = frames_of(path)
    data = bytearray(path.read_bytes())
    data[fr[1][0] + FRAME.size] ^= 1
    data[fr[7][0] + FRAME.size] ^= 1
    path.write_bytes(bytes(data))
    out = io.StringIO()

    code = verify_raw_main(tmp_path, DAY, False, out=out)

    lines = out.getvalue().splitlines()
    assert code == 1
    assert lines[0].startswith(f"payload_edited: segment={rel(DAY, 'sim')} stream=sim seq=2:")
    assert lines[1].startswith(f"payload_edited: segment={rel(DAY, 'sim')} stream=sim seq=8:")
    assert lines[2].startswith("FAILED:")


def test_it_stores_recorded_bybit_l2_messages_byte_exact(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[3] / "shared/data/bybit_XRPUSDT_ob500_2024-12-01.data"
    lines = source.read_bytes().splitlines(keepends=True)
    store = RawStore(tmp_path)
    with store.writer("file-bybit") as w:
        w.append_many(lines, recv_ns=[DAY_NS + i for i in range(len(lines))])

    records = list(store.read("file-bybit"))
    assert b"".join(r.payload for r in records) == source.read_bytes()
    assert store.verify().ok
    path = seg_path(tmp_path, DAY, "file-bybit")
    off = frames_of(path)[0][0]  # The 500-level snapshot, far longer than a quote.
    data = bytearray(path.read_bytes())
    data[off + FRAME.size + 5000] ^= 0x20
    path.write_bytes(bytes(data))
    assert problems_of(tmp_path) == [("payload_edited", rel(DAY, "file-bybit"), 1)]


def test_it_catches_a_sealed_segment_rebuilt_consistently_through_the_manifest(tmp_path: Path) -> None:
    write_day(tmp_path / "real")
    _seal(tmp_path / "real")
    # An attacker who can rewrite the whole file rebuilds a self-consistent chain with record 5 changed.
    forged_payloads = [quote(i) if i != 4 else b'{"e":"bookTicker","b":"1.00"}' for i in range(10)]
    with RawStore(tmp_path / "forged").writer("sim") as w:
        w.append_many(forged_payloads, recv_ns=[DAY_NS + 1_000 * i for i in range(10)])
    target = seg_path(tmp_path / "real", DAY, "sim")
    os.chmod(target, 0o644)
    target.write_bytes(seg_path(tmp_path / "forged", DAY, "sim").read_bytes())

    problems = RawStore(tmp_path / "real").verify().problems

    fields = {p.detail.split(":")[0] for p in problems}
    assert all(p.kind == ProblemKind.MANIFEST_MISMATCH and p.segment == rel(DAY, "sim") for p in problems)
    assert fields == {"bytes", "file_sha256", "chain_end", "merkle_root"}
