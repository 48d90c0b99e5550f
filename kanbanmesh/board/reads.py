"""Reading a board document with one call into Yrs: one field of an entry, an entry's
fields, a column's entries, the number of root types.

pycrdt's `Map.get(key)` opens three transactions and checks the key twice before it reads
(`get` -> `__contains__` -> `__getitem__` -> `_check_key` -> `__contains__`): ~9 us a field
here, ~6 us inside an open transaction. The server reads a few fields of every entry an update
touches, a worker of every task it runs, a client of every task it waits on: on those paths
`read_field` reads in ~5 us, ~2 us inside an open transaction.

It goes one level below pycrdt's public API (`Map.integrated`, `Doc._doc`, a transaction's
`_txn` and `_maybe_as_type_or_doc`), which is why pycrdt is pinned to one version in
pyproject.toml; tests/board/test_reads.py holds these functions to `Map.get`, `Map.items` and
`Doc.keys`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map, Text
from pycrdt._pycrdt import Map as _YrsMap
from pycrdt._pycrdt import Text as _YrsText

from kanbanmesh.board import constants as c
from kanbanmesh.errors import InvalidTaskError

# What Yrs hands back for JSON-like values: returned as they are.
PLAIN_TYPES = frozenset({str, int, float, bool, type(None), dict, list})


def read_field(ymap: Map[Any], key: str, default: Any = None) -> Any:
    """`ymap.get(key, default)`, for a map integrated in a document."""
    with ymap.doc.transaction() as txn:
        integrated = ymap.integrated
        if not integrated.has(txn._txn, key):
            return default
        value = integrated.get(txn._txn, key)
    # Most fields are plain values; pycrdt's wrapper tries each of its types on them first.
    return value if type(value) in PLAIN_TYPES else ymap._maybe_as_type_or_doc(value)


@dataclass(frozen=True)
class NotAMap:
    """What `read_entry` gives for a key that holds something other than a Y.Map: a plain
    JSON object included, which reads as a dict like a map's fields but is no entry."""

    value: Any


@dataclass(frozen=True)
class Unreadable:
    """What `read_entry` gives for a Y.Map whose fields Python cannot read as plain values
    (nested deeper than its recursion limit): an invalid entry."""

    reason: str


def read_entry(ymap: Map[Any], key: str, default: Any = None) -> Any:
    """An entry's plain fields, as `plain_fields` gives them, for a key that holds a Y.Map;
    `NotAMap(value)` for a key that holds anything else, `Unreadable` for a map Python cannot
    read; `default` for a missing key. The entry's JSON comes out of Yrs in the same call,
    without wrapping it in a pycrdt `Map`."""
    with ymap.doc.transaction() as txn:
        integrated, raw = ymap.integrated, txn._txn
        assert raw is not None  # set while the transaction is open
        if not integrated.has(raw, key):
            return default
        value = integrated.get(raw, key)
        if type(value) is _YrsMap:
            fields = _fields_from_json(value.to_json(raw))
            if isinstance(fields, dict):
                return fields
            if fields is _TOO_DEEP:
                return Unreadable(_TOO_DEEP_REASON)
    if type(value) in PLAIN_TYPES:
        return NotAMap(value)
    wrapped = ymap._maybe_as_type_or_doc(value)
    if not isinstance(wrapped, Map):
        return NotAMap(wrapped)
    try:
        return plain_fields(wrapped)
    except InvalidTaskError as exc:
        return Unreadable(str(exc))


def shared_fields(ymap: Map[Any], key: str) -> list[str]:
    """The fields of entry `key` of column `ymap` that hold a shared type (a Y.Text, Y.Map or
    Y.Array), sorted; [] when `key` holds no Y.Map."""
    with ymap.doc.transaction() as txn:
        raw = txn._txn
        entry = _raw_entry(ymap, key, raw)
        if entry is None:
            return []
        return sorted(name for name in _keys(entry, raw) if type(entry.get(raw, name)) not in PLAIN_TYPES)


def entry_field(ymap: Map[Any], key: str, field: str, default: Any = None) -> Any:
    """Field `field` of entry `key` of column `ymap`, read without wrapping the entry in a
    pycrdt `Map`; `default` when there is no such entry or field, or the field holds a shared
    type."""
    with ymap.doc.transaction() as txn:
        raw = txn._txn
        entry = _raw_entry(ymap, key, raw)
        if entry is None or not entry.has(raw, field):
            return default
        value = entry.get(raw, field)
    return value if type(value) in PLAIN_TYPES else default


def _raw_entry(ymap: Map[Any], key: str, raw: Any) -> Any:
    """Yrs' own map of entry `key` of column `ymap` (None if `key` holds no Y.Map), in the
    open transaction `raw`."""
    assert raw is not None  # set while the transaction is open
    entry: Any = ymap.integrated.get(raw, key) if ymap.integrated.has(raw, key) else None
    return entry if type(entry) is _YrsMap else None


def _keys(integrated: Any, raw: Any) -> list[str]:
    keys: list[str] = integrated.keys(raw)
    return keys


def output_length(ymap: Map[Any], key: str) -> int:
    """The length of entry `key`'s `output` text as Yrs counts it (without reading the text);
    0 when there is none."""
    with ymap.doc.transaction() as txn:
        raw = txn._txn
        assert raw is not None  # set while the transaction is open
        entry = _raw_entry(ymap, key, raw)
        if entry is None or not entry.has(raw, c.F_OUTPUT):
            return 0
        output: Any = entry.get(raw, c.F_OUTPUT)
        return int(output.len(raw)) if type(output) is _YrsText else len(str(output))


def read_items(ymap: Map[Any]) -> list[tuple[str, Any]]:
    """`list(ymap.items())` in one transaction, one call into Yrs per value (pycrdt's
    `items()` checks each key twice more and opens a transaction per value)."""
    with ymap.doc.transaction() as txn:
        integrated, raw = ymap.integrated, txn._txn
        values = [(key, integrated.get(raw, key)) for key in integrated.keys(raw)]
    wrap = ymap._maybe_as_type_or_doc
    return [(key, value if type(value) in PLAIN_TYPES else wrap(value)) for key, value in values]


def root_count(doc: Doc[Any]) -> int:
    """`len(list(doc.keys()))`: `Doc.keys()` wraps every root in a Python object first, which
    costs the update validator more, on every update, than the rest of its root check."""
    with doc.transaction() as txn:
        assert txn._txn is not None  # set while the transaction is open
        return len(doc._doc.roots(txn._txn))


def plain_fields(ymap: Map[Any]) -> dict[str, Any]:
    """An entry's fields as plain Python values (`output` as its string); raises
    `InvalidTaskError` for an entry nested too deep for Python to read."""
    # The map's JSON comes out of Rust in one call; reading field by field through pycrdt's
    # wrappers costs six times as much, and every move and check reads a whole entry.
    fields = _fields_from_json(str(ymap))
    if isinstance(fields, dict):
        return fields
    if fields is _TOO_DEEP:
        raise InvalidTaskError(f"invalid task: {_TOO_DEEP_REASON}")
    fields = {}
    try:
        for key, value in ymap.items():
            fields[key] = str(value) if isinstance(value, Text) else _plain(value)
    except RecursionError as exc:
        raise InvalidTaskError(f"invalid task: {_TOO_DEEP_REASON}") from exc
    return fields


_TOO_DEEP = object()  # `_fields_from_json`: nested past Python's recursion limit
_TOO_DEEP_REASON = "values nested too deep to read"


def _fields_from_json(text: str) -> Any:
    """A map's JSON (from Yrs) as a dict; None where it does not read as one (a value JSON
    cannot hold, NaN say: the caller reads the map field by field); `_TOO_DEEP` for a value
    nested past Python's recursion limit (the JSON decoder recurses)."""
    try:
        fields = json.loads(text)
    except RecursionError:
        return _TOO_DEEP
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def _plain(value: Any) -> Any:
    to_py = getattr(value, "to_py", None)
    return to_py() if callable(to_py) else value
