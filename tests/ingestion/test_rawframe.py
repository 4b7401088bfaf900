"""The C framer (ingestion/_rawframe.c) writes exactly what the pure-Python framer writes.

The Python functions ``_py_frame_const`` and ``_py_frame_var`` are the
reference: for any batch the C ones must return the same bytes, sequence
number and chain head, stop at the same day boundary, and refuse the same bad
inputs with the same exception types. A store written through the C path must
pass verification, and fail it once tampered with.

The C module must be built (``scripts/build_ext.py``, which ``make venv``
runs); these tests fail rather than skip without it, so a machine that lost
its build step is noticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import struct
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion import rawstore
from ingestion.rawstore import ProblemKind, RawStore, verify_raw_main
from ingestion.types import RawRef

try:
    from ingestion import _rawframe  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - only on a machine without the build step
    pytest.fail(f"ingestion._rawframe is not built ({exc}); run .venv/bin/python scripts/build_ext.py", pytrace=False)

DAY = date(2024, 3, 5)
DAY_NS = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp()) * 1_000_000_000
NS_PER_DAY = 86_400 * 1_000_000_000
U64_MAX = 2**64 - 1
FRAME = struct.Struct(">HIQQ32s32s")
SEG_HDR = struct.Struct(">8sHHQ32s")

payload_st = st.one_of(
    st.binary(max_size=0),
    st.binary(min_size=1, max_size=127),
    st.binary(min_size=128, max_size=2_000),  # past the Python framer's switch to OpenSSL
)
chain_st = st.binary(min_size=32, max_size=32)


def c_const(*args: object) -> tuple[bytes, int, bytes]:
    return _rawframe.frame_const(*args)


def py_const(*args: object) -> tuple[bytes, int, bytes]:
    buf, seq, chain = rawstore._py_frame_const(*args)  # type: ignore[arg-type]
    return bytes(buf), seq, chain


def c_var(*args: object) -> tuple[bytes, int, int, bytes]:
    return _rawframe.frame_var(*args)


def py_var(*args: object) -> tuple[bytes, int, int, bytes]:
    buf, stop, seq, chain = rawstore._py_frame_var(*args)  # type: ignore[arg-type]
    return bytes(buf), stop, seq, chain


@pytest.fixture
def framer() -> Iterator[None]:
    """Restore the framer the module chose at import after a test switches it."""
    before = rawstore.FRAMER
    yield
    rawstore._select_framer(before)


# --------------------------------------------------------------------------- same bytes


def test_the_store_uses_the_c_framer_when_it_is_built() -> None:
    if os.environ.get("FP_RAWSTORE_FRAMER") == "python":
        assert rawstore.FRAMER == "python"
        assert rawstore._frame_const is rawstore._py_frame_const
        return
    assert rawstore.FRAMER == "c"
    assert rawstore._frame_const is _rawframe.frame_const
    assert rawstore._frame_var is _rawframe.frame_var
    assert _rawframe.ABI_VERSION == rawstore._RAWFRAME_ABI


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(payload_st, max_size=80),
    ts=st.integers(0, U64_MAX),
    seq=st.integers(0, 2**63),
    chain=chain_st,
)
def test_it_frames_a_const_time_batch_exactly_as_python_does(payloads: list[bytes], ts: int, seq: int, chain: bytes) -> None:
    assert c_const(payloads, ts, seq, chain) == py_const(payloads, ts, seq, chain)


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(payload_st, max_size=80),
    data=st.data(),
    seq=st.integers(0, 2**63),
    chain=chain_st,
)
def test_it_frames_variable_times_and_stops_at_the_day_boundary_exactly_as_python_does(
    payloads: list[bytes], data: st.DataObject, seq: int, chain: bytes
) -> None:
    n = len(payloads)
    # Receive times around a day end, not necessarily in order (a clock may step back).
    stamps = data.draw(st.lists(st.integers(DAY_NS + NS_PER_DAY - 5, DAY_NS + NS_PER_DAY + 5), min_size=n, max_size=n))
    start = data.draw(st.integers(0, n))
    day_end = DAY_NS + NS_PER_DAY

    got = c_var(payloads, stamps, start, day_end, seq, chain)

    assert got == py_var(payloads, stamps, start, day_end, seq, chain)
    stop = got[1]
    assert stop == next((i for i in range(start, n) if stamps[i] >= day_end), n)


@settings(max_examples=50, deadline=None)
@given(ts=st.integers(0, U64_MAX), day_end=st.integers(-(2**70), 2**70), seq=st.integers(0, 1000))
def test_it_compares_receive_times_with_any_day_end_as_python_does(ts: int, day_end: int, seq: int) -> None:
    args = ([b"a", b"b"], [ts, ts], 0, day_end, seq, b"\x07" * 32)
    assert c_var(*args) == py_var(*args)


def test_it_frames_many_records_of_every_size_exactly_as_python_does() -> None:
    rng = random.Random(20240305)
    sizes = [0, 1, 55, 56, 63, 64, 119, 120, 127, 128, 129, 1000, 70_000]
    payloads = [rng.randbytes(rng.choice(sizes)) for _ in range(20_000)]
    stamps = sorted(rng.randrange(DAY_NS, DAY_NS + 2 * NS_PER_DAY) for _ in payloads)
    chain = hashlib.sha256(b"x").digest()

    const = c_const(payloads, DAY_NS, 41, chain)
    var = c_var(payloads, stamps, 0, DAY_NS + NS_PER_DAY, 41, chain)

    assert const == py_const(payloads, DAY_NS, 41, chain)
    assert var == py_var(payloads, stamps, 0, DAY_NS + NS_PER_DAY, 41, chain)
    assert const[1] == 41 + len(payloads)
    assert 0 < var[1] < len(payloads)
    assert len(const[0]) == sum(FRAME.size + len(p) for p in payloads)


def test_it_hashes_the_record_as_the_format_documents() -> None:
    """Checked against the documented formula, not against either framer."""
    chain0 = b"\x01" * 32
    buf, seq, chain = c_const([b"hello", b""], 7, 9, chain0)

    d1, d2 = hashlib.sha256(b"hello").digest(), hashlib.sha256(b"").digest()
    c1 = hashlib.sha256(chain0 + (10).to_bytes(8, "big") + (7).to_bytes(8, "big") + d1).digest()
    c2 = hashlib.sha256(c1 + (11).to_bytes(8, "big") + (7).to_bytes(8, "big") + d2).digest()
    assert (seq, chain) == (11, c2)
    assert buf == FRAME.pack(0xF5A1, 5, 10, 7, d1, c1) + b"hello" + FRAME.pack(0xF5A1, 0, 11, 7, d2, c2)


def test_it_takes_bytes_like_payloads_as_python_does() -> None:
    payloads = [bytearray(b"abc"), memoryview(b"defg"), b"h"]
    assert c_const(payloads, 1, 0, b"\0" * 32) == py_const(payloads, 1, 0, b"\0" * 32)


def test_its_bare_hash_floor_computes_the_chain() -> None:
    chain = b"\0" * 32
    for seq, p in enumerate([b"a", b"bb"], start=1):
        chain = rawstore.link_chain(chain, seq, 5, hashlib.sha256(p).digest())
    assert _rawframe.hash_chain_only([b"a", b"bb"], 5) == chain


# --------------------------------------------------------------------------- same refusals


BAD_PAYLOADS = ["text", 12, None, [1, 2], 1.5]
BAD_TIMES = [-1, 2**64, 1.5, "1", None, object()]


def raised(fn: object, *args: object) -> type[BaseException] | None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("bad", BAD_PAYLOADS, ids=repr)
@pytest.mark.parametrize("position", [0, 1])
def test_it_refuses_a_payload_that_is_not_bytes_as_python_does(bad: object, position: int) -> None:
    payloads = [b"ok", b"ok"]
    payloads[position] = bad  # type: ignore[call-overload]
    const = (payloads, DAY_NS, 0, b"\0" * 32)
    var = (payloads, [DAY_NS, DAY_NS], 0, DAY_NS + NS_PER_DAY, 0, b"\0" * 32)

    assert raised(c_const, *const) is TypeError
    assert raised(py_const, *const) is TypeError
    assert raised(c_var, *var) is TypeError
    assert raised(py_var, *var) is TypeError


@pytest.mark.parametrize("bad", BAD_TIMES, ids=repr)
def test_it_refuses_a_receive_time_outside_u64_as_python_does(bad: object) -> None:
    const = ([b"ok"], bad, 0, b"\0" * 32)
    var = ([b"ok", b"ok"], [DAY_NS, bad], 0, DAY_NS + NS_PER_DAY, 0, b"\0" * 32)

    assert raised(c_const, *const) is raised(py_const, *const)
    assert raised(c_const, *const) is not None
    # A time too large for u64 is also past the day end, so frame_var stops there without error.
    assert raised(c_var, *var) is raised(py_var, *var)
    assert raised(py_var, *var) in (None, struct.error, TypeError)


def test_a_bad_payload_is_reported_before_a_bad_receive_time_as_python_does() -> None:
    args = (["text"], -1, 0, b"\0" * 32)
    assert raised(c_const, *args) is raised(py_const, *args) is TypeError


def test_it_refuses_a_chain_that_is_not_32_bytes() -> None:
    """Stricter than the Python framer, which struct would pad: the chain is only ever 32 bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        c_const([b"a"], 1, 0, b"short")
    with pytest.raises(TypeError):
        c_const([b"a"], 1, 0, "x" * 32)


@pytest.mark.parametrize("choice", ["c", "python"])
def test_a_writer_refuses_bad_input_and_keeps_its_state_with_either_framer(tmp_path: Path, framer: None, choice: str) -> None:
    rawstore._select_framer(choice)
    with RawStore(tmp_path).writer("sim") as w:
        w.append_many([b"good"], recv_ns=DAY_NS)
        with pytest.raises(TypeError):
            w.append_many([b"fine", "text"], recv_ns=DAY_NS)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="recv_ns"):
            w.append_many([b"fine"], recv_ns=-1)
        with pytest.raises(ValueError, match="recv_ns"):
            w.append_many([b"fine", b"fine"], recv_ns=[DAY_NS, 1.5])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="recv_ns"):
            w.append(b"fine", recv_ns=-5)
        with pytest.raises(TypeError):
            w.append("text", recv_ns=DAY_NS)  # type: ignore[arg-type]
        assert w.last_seq == 1
        w.append_many([b"after"], recv_ns=DAY_NS + 1)

    store = RawStore(tmp_path)
    assert [r.payload for r in store.read("sim")] == [b"good", b"after"]
    assert store.verify().ok


def test_it_falls_back_to_python_with_a_warning_when_the_module_is_missing(monkeypatch, caplog) -> None:
    before = rawstore.FRAMER
    # What an unbuilt checkout imports: no submodule, no attribute on the package.
    monkeypatch.setitem(sys.modules, "ingestion._rawframe", None)
    monkeypatch.delattr(sys.modules["ingestion"], "_rawframe", raising=False)
    try:
        assert rawstore._select_framer("auto") == "python"
        assert rawstore._frame_const is rawstore._py_frame_const
        assert rawstore._c_refs is None
        assert "C framer unavailable" in caplog.text
        with pytest.raises(ImportError, match="FP_RAWSTORE_FRAMER=c"):
            rawstore._select_framer("c")
    finally:
        monkeypatch.undo()
        rawstore._select_framer(before)
    assert rawstore.FRAMER == before


def test_select_framer_refuses_an_unknown_choice() -> None:
    with pytest.raises(ValueError, match="auto, c or python"):
        rawstore._select_framer("fast")


# --------------------------------------------------------------------------- stores written through C


def write_store(root: Path, choice: str) -> list[bytes]:
    """Single appends, const-time batches and a batch across midnight, through one framer."""
    rawstore._select_framer(choice)
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice([0, 40, 120, 300])) for _ in range(600)]
    with RawStore(root).writer("binance") as w:
        for p in payloads[:50]:
            w.append(p, recv_ns=DAY_NS + 10)
        w.append_many(payloads[50:300], recv_ns=DAY_NS + 20)
        end = DAY_NS + NS_PER_DAY
        w.append_many(payloads[300:], recv_ns=[end - 150 + i for i in range(300)])
    return payloads


def test_c_and_python_write_byte_identical_stores(tmp_path: Path, framer: None) -> None:
    write_store(tmp_path / "c", "c")
    write_store(tmp_path / "py", "python")

    files = sorted(p.relative_to(tmp_path / "c") for p in (tmp_path / "c").rglob("*.seg"))
    assert [str(f) for f in files] == ["2024/03/05/binance.seg", "2024/03/06/binance.seg"]
    for f in files:
        assert (tmp_path / "c" / f).read_bytes() == (tmp_path / "py" / f).read_bytes()


def test_a_store_written_by_the_c_framer_verifies_and_seals(tmp_path: Path, framer: None) -> None:
    payloads = write_store(tmp_path, "c")
    store = RawStore(tmp_path)

    assert [r.payload for r in store.read("binance")] == payloads
    report = store.verify()
    assert report.ok, report.problems
    assert report.records == 600
    assert verify_raw_main(tmp_path, None, True, out=open(os.devnull, "w")) == 0  # noqa: SIM115
    manifest = store.seal_day(DAY)
    assert manifest.streams["binance"].count == 450
    assert store.verify().ok


def test_a_tampered_store_written_by_the_c_framer_fails_verification(tmp_path: Path, framer: None) -> None:
    write_store(tmp_path, "c")
    path = tmp_path / "2024/03/06/binance.seg"
    data = bytearray(path.read_bytes())
    # Flip one payload byte of the first record of the second day (seq 451).
    off = SEG_HDR.size
    _magic, plen, seq, _recv, _sha, _chain = FRAME.unpack_from(data, off)
    assert seq == 451 and plen > 0
    data[off + FRAME.size] ^= 0x01
    path.write_bytes(bytes(data))

    report = RawStore(tmp_path).verify()

    assert not report.ok
    assert [(p.kind, p.segment, p.seq) for p in report.problems] == [(ProblemKind.PAYLOAD_EDITED, "2024/03/06/binance.seg", 451)]
    assert verify_raw_main(tmp_path, DAY + timedelta(days=1), False, out=open(os.devnull, "w")) == 1  # noqa: SIM115


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(("first", "last"), [(1, 1), (5, 1_004), (3, 2)])
def test_it_builds_the_same_refs_as_the_rawref_constructor(first: int, last: int, framer: None) -> None:
    expected = [RawRef("binance", s) for s in range(first, last + 1)]
    rawstore._select_framer("c")
    from_c = rawstore._refs("binance", first, last)
    rawstore._select_framer("python")
    from_py = rawstore._refs("binance", first, last)

    assert from_c == from_py == expected
    assert all(type(r) is RawRef for r in from_c)
    assert {hash(r) for r in from_c} == {hash(r) for r in expected}
    if from_c:
        with pytest.raises(dataclasses.FrozenInstanceError):
            from_c[0].seq = 99  # type: ignore[misc]


def test_make_refs_refuses_slots_that_are_not_descriptors() -> None:
    with pytest.raises(TypeError, match="descriptors"):
        _rawframe.make_refs(RawRef, None, None, "s", 1, 2)
