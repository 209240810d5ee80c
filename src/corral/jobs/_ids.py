"""Compact per-line bookkeeping for JSONL jobs: 8-byte id hashes in an open-addressing table.

A million-line job must not keep a Python object per line. Each ``custom_id`` is reduced to a
64-bit keyed BLAKE2b hash, stored in an ``array('Q')`` hash table (linear probing, at most 60 %
full) with a parallel ``bytearray`` of flags: about 15 bytes per line, and no per-line objects.

Hashes stand in for ids safely because the input scan proves that distinct input ids have
distinct hashes (it checks every equal pair against the real strings and re-keys on a true
collision), and the output of a job only ever holds ids from its own input.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Final

__all__: list[str] = []  # internal: nothing here is public API

_EMPTY: Final = 0
_MIN_SLOTS: Final = 1 << 10


def id_hash(custom_id: str, salt: int) -> int:
    """Return the 64-bit table hash of *custom_id* (never 0, which marks an empty slot).

    Args:
        custom_id: The id.
        salt: Selects the hash key; the scan changes it only after a true collision.
    """
    digest = hashlib.blake2b(
        custom_id.encode("utf-8", "surrogatepass"),
        digest_size=8,
        key=salt.to_bytes(8, "little"),
    ).digest()
    return int.from_bytes(digest, "little") or 1


class IdTable:
    """A set of id hashes, each with a one-byte flag (for example "done").

    Linear probing in a table at most 60 % full: about 15 bytes per id when sized for the
    expected count, which is the common case (the scan counts lines first).

    Args:
        expected: How many ids are expected; the table grows past it if needed.
    """

    __slots__ = ("_flags", "_keys", "_len", "_limit", "_slots")

    def __init__(self, expected: int = 0) -> None:
        self._allocate(max(_MIN_SLOTS, expected * 5 // 3 + 1))
        self._len = 0

    def _allocate(self, slots: int) -> None:
        self._keys = array("Q", [0]) * slots
        self._flags = bytearray(slots)
        self._slots = slots
        self._limit = slots * 3 // 5

    def __repr__(self) -> str:
        return f"<IdTable ids={self._len} slots={self._slots}>"

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's storage."""
        return self._keys.itemsize * len(self._keys) + len(self._flags)

    def add(self, h: int) -> bool:
        """Insert *h*; return False if it was already present.

        Args:
            h: A hash from :func:`id_hash`.
        """
        keys = self._keys
        slots = self._slots
        i = h % slots
        while True:
            k = keys[i]
            if k == _EMPTY:
                keys[i] = h
                self._len += 1
                if self._len > self._limit:
                    self._grow()
                return True
            if k == h:
                return False
            i += 1
            if i == slots:
                i = 0

    def _slot(self, h: int) -> int:
        keys = self._keys
        slots = self._slots
        i = h % slots
        while True:
            k = keys[i]
            if k == h:
                return i
            if k == _EMPTY:
                return -1
            i += 1
            if i == slots:
                i = 0

    def __contains__(self, h: object) -> bool:
        return isinstance(h, int) and self._slot(h) >= 0

    def flag(self, h: int) -> int:
        """Return *h*'s flag, or -1 if *h* is not in the table.

        Args:
            h: A hash from :func:`id_hash`.
        """
        i = self._slot(h)
        return self._flags[i] if i >= 0 else -1

    def set_flag(self, h: int, value: int) -> int:
        """Set *h*'s flag and return the previous one, or -1 (and set nothing) if *h* is absent.

        Args:
            h: A hash from :func:`id_hash`.
            value: The new flag, 0 to 255.
        """
        i = self._slot(h)
        if i < 0:
            return -1
        old = self._flags[i]
        self._flags[i] = value
        return old

    def _grow(self) -> None:
        old_keys, old_flags = self._keys, self._flags
        self._allocate(2 * self._slots)
        keys, flags, slots = self._keys, self._flags, self._slots
        for j, k in enumerate(old_keys):
            if k == _EMPTY:
                continue
            i = k % slots
            while keys[i] != _EMPTY:
                i += 1
                if i == slots:
                    i = 0
            keys[i] = k
            flags[i] = old_flags[j]


class IdDigest:
    """An order-independent digest of a set of ids: the input's identity in the job manifest.

    Each id contributes a 128-bit BLAKE2b hash, summed modulo 2**128, so a shuffled copy of an
    input has the same digest and any added, removed or renamed id changes it.
    """

    __slots__ = ("_count", "_sum")

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0

    def __repr__(self) -> str:
        return f"<IdDigest count={self._count} {self.hexdigest()}>"

    def add(self, custom_id: str) -> None:
        """Add one id.

        Args:
            custom_id: The id.
        """
        digest = hashlib.blake2b(
            custom_id.encode("utf-8", "surrogatepass"), digest_size=16
        ).digest()
        self._sum = (self._sum + int.from_bytes(digest, "little")) & ((1 << 128) - 1)
        self._count += 1

    def hexdigest(self) -> str:
        """Return the digest as 32 hex digits."""
        return self._sum.to_bytes(16, "little").hex()
