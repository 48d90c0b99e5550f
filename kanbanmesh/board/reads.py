"""Reading one field of a board entry with one call into Yrs.

pycrdt's `Map.get(key)` opens three transactions and checks the key twice before it reads
(`get` -> `__contains__` -> `__getitem__` -> `_check_key` -> `__contains__`): ~9 us a field
here, ~6 us inside an open transaction. The server reads a few fields of every entry an update
touches, a worker of every task it runs, a client of every task it waits on: on those paths
`read_field` reads in ~5 us, ~2 us inside an open transaction.

It goes one level below pycrdt's public API (`Map.integrated`, a transaction's `_txn` and
`_maybe_as_type_or_doc`), which is why pycrdt is pinned to one version in pyproject.toml;
tests/board/test_reads.py holds these functions to `Map.get` and `in`.
"""

from __future__ import annotations

from typing import Any

from pycrdt import Map

# What Yrs hands back for JSON-like values: returned as they are.
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})


def read_field(ymap: Map[Any], key: str, default: Any = None) -> Any:
    """`ymap.get(key, default)`, for a map integrated in a document."""
    with ymap.doc.transaction() as txn:
        integrated = ymap.integrated
        if not integrated.has(txn._txn, key):
            return default
        value = integrated.get(txn._txn, key)
    # Most fields are plain values; pycrdt's wrapper tries each of its types on them first.
    return value if type(value) in _PLAIN else ymap._maybe_as_type_or_doc(value)


def read_items(ymap: Map[Any]) -> list[tuple[str, Any]]:
    """`list(ymap.items())` in one transaction, one call into Yrs per value (pycrdt's
    `items()` checks each key twice more and opens a transaction per value)."""
    with ymap.doc.transaction() as txn:
        integrated, raw = ymap.integrated, txn._txn
        values = [(key, integrated.get(raw, key)) for key in integrated.keys(raw)]
    wrap = ymap._maybe_as_type_or_doc
    return [(key, value if type(value) in _PLAIN else wrap(value)) for key, value in values]
