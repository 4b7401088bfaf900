"""The one-pass number readers of the columnar Tardis path give exactly what ``float``/``int`` give, or decline."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ingestion.parsers import _plain_floats, _plain_ints


def _random_decimal(rnd: random.Random, long: bool) -> str:
    whole = str(rnd.randint(0, 10 ** rnd.randint(0, 16 if long else 8)))
    if rnd.random() < 0.3:
        return whole
    frac = str(rnd.randint(0, 10 ** rnd.randint(0, 10 if long else 5))).zfill(rnd.randint(0, 4))
    form = rnd.random()
    return f"{whole}.{frac}" if form < 0.8 else (f".{frac}" if form < 0.9 else f"{whole}.")


def test_plain_floats_equal_float_of_each_field_bit_for_bit():
    rnd = random.Random(20200222)
    accepted = 0
    for _ in range(2000):
        long = rnd.random() < 0.2
        column = [_random_decimal(rnd, long) for _ in range(rnd.randint(1, 200))]
        got = _plain_floats(column)
        if got is None:
            # Declined (a field of more than 15 digits): the caller converts field by field.
            assert max(len(f.replace(".", "")) for f in column) > 15
            continue
        accepted += 1
        want = np.fromiter(map(float, column), dtype=np.float64, count=len(column))
        assert got.tobytes() == want.tobytes(), [(f, g, w) for f, g, w in zip(column, got, want, strict=True) if g != w][:3]
    assert accepted > 200


@pytest.mark.parametrize(
    "column",
    [["1.2.3", "4"], ["", "1"], [".", "2"], ["1", ""], ["-1"], ["+1"], ["1e5"], [" 1"], ["1_0"], ["1234567890123456"], ["١"]],
)
def test_plain_floats_decline_what_is_not_a_short_plain_decimal(column):
    assert _plain_floats(column) is None


def test_plain_floats_read_the_edge_forms_float_reads():
    assert _plain_floats(["5.", ".5", "007", "0.10", "0", "9007199254740.99"]).tolist() == [
        5.0,
        0.5,
        7.0,
        0.1,
        0.0,
        float("9007199254740.99"),
    ]


def test_plain_ints_equal_int_of_each_field_or_decline():
    column = ["1582329600000000", "0", "0001", "9000000000000000"]
    assert _plain_ints(column).tolist() == [int(v) for v in column]
    for bad in (["1", ""], ["", "1"], ["1.5"], ["-1"], ["1 "], [""], ["١"]):
        assert _plain_ints(bad) is None, bad
    # Past int64: read as its maximum, which the caller's range check refuses.
    assert _plain_ints(["99999999999999999999999"]).tolist() == [2**63 - 1]
