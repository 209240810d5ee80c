"""The compact id bookkeeping: an array-backed hash set with flags, and the input digest."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from corral.jobs._ids import IdDigest, IdTable, id_hash


@given(st.lists(st.integers(min_value=1, max_value=2**64 - 1), max_size=3000))
def test_id_table_behaves_like_a_set(keys: list[int]) -> None:
    """add() and membership agree with a Python set, across growth and probe clusters."""
    table = IdTable()
    model: set[int] = set()
    for k in keys:
        assert table.add(k) == (k not in model)
        model.add(k)
    assert len(table) == len(model)
    for k in model:
        assert k in table
        assert table.flag(k) == 0
    assert table.flag(0xDEAD_BEEF) == (-1 if 0xDEAD_BEEF not in model else 0)


def test_id_table_keeps_flags_when_it_grows() -> None:
    """Flags set before a resize are still set after it; absent keys report -1."""
    table = IdTable()
    keys = random.Random(1).sample(range(1, 2**63), 5000)
    for k in keys[:100]:
        table.add(k)
        table.set_flag(k, 1)
    for k in keys[100:]:
        table.add(k)
    assert all(table.flag(k) == 1 for k in keys[:100])
    assert all(table.flag(k) == 0 for k in keys[100:])
    absent = next(k for k in range(1, 10_000) if k not in set(keys))
    assert table.set_flag(absent, 1) == -1
    assert absent not in table


def test_id_table_stays_compact() -> None:
    """A table sized for 100k ids holds under 20 bytes per id and no Python object per id."""
    table = IdTable(100_000)
    for i in range(100_000):
        table.add(id_hash(f"id-{i}", 0))
    assert len(table) == 100_000
    assert table.nbytes / 100_000 < 20


def test_id_hash_depends_on_salt_and_is_never_zero() -> None:
    """Changing the salt changes the hash (so a collision can be escaped), and 0 is reserved."""
    assert id_hash("q1", 0) != id_hash("q1", 1)
    assert all(id_hash(f"x{i}", 0) != 0 for i in range(1000))


@given(st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=50), st.randoms())
def test_digest_ignores_order_but_not_content(ids: list[str], rnd: random.Random) -> None:
    """A shuffled id set has the same digest; one more id changes it."""
    a, b = IdDigest(), IdDigest()
    for cid in ids:
        a.add(cid)
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    for cid in shuffled:
        b.add(cid)
    assert a.hexdigest() == b.hexdigest()
    b.add("\x00extra")
    assert a.hexdigest() != b.hexdigest()
