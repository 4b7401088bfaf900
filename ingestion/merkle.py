"""RFC 6962 (Certificate Transparency) Merkle tree hashing over byte strings.

The raw store seals each day with a Merkle root over its record digests, so a
single record can later be proven to belong to a sealed day with a short
audit path instead of the whole segment. The hashing follows RFC 6962 section
2.1 exactly: a leaf is ``sha256(0x00 || data)``, an inner node is
``sha256(0x01 || left || right)``, and a list of ``n > 1`` leaves splits at the
largest power of two strictly below ``n``. The empty tree hashes to
``sha256(b"")``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """Return the RFC 6962 tree head over ``leaves`` (the leaf data, not its hashes).

    The tree is built bottom-up: pairing neighbours level by level and carrying
    an unpaired last node up unchanged produces the same tree as the
    recursive largest-power-of-two split, in linear time and without recursion.
    """
    sha = hashlib.sha256
    level = [sha(_LEAF_PREFIX + d).digest() for d in leaves]
    if not level:
        return sha(b"").digest()
    while len(level) > 1:
        nxt = [sha(_NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 6962 audit path for leaf ``index`` (section 2.1.1)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    return _path(index, list(leaves))


def _path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), merkle_root(d[k:])]
    return [*_path(m - k, d[k:]), merkle_root(d[:k])]


def verify_inclusion(data: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Check an audit path against a tree head (RFC 9162 section 2.1.3.2)."""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash(data)
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (for ``n > 1``)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k
