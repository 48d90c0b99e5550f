"""The fast reads read what pycrdt's own `Map.get`, `Map.items` and `Doc.keys` read."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from kanbanmesh.board.reads import (
    NotAMap,
    entry_field,
    output_length,
    plain_fields,
    read_entry,
    read_field,
    read_items,
    root_count,
)


@pytest.fixture
def entry() -> Map[Any]:
    doc: Doc[Any] = Doc()
    column = doc.get("todo", type=Map)
    column["t1"] = Map({"n": 3, "s": "x", "none": None, "d": {"a": [1, 2]}, "output": Text("hi"),
                        "inner": Map({"k": 1})})
    entry: Map[Any] = column["t1"]
    return entry


@pytest.mark.parametrize("key", ["n", "s", "none", "d", "missing"])
def test_plain_values_and_missing_keys_read_as_map_get(entry: Map[Any], key: str) -> None:
    assert read_field(entry, key) == entry.get(key)
    assert read_field(entry, key, "default") == entry.get(key, "default")
    with entry.doc.transaction():
        assert read_field(entry, key) == entry.get(key)


@pytest.mark.parametrize("key", ["n", "s", "none", "d", "missing"])
def test_a_field_read_through_its_column_is_map_get(entry: Map[Any], key: str) -> None:
    column = entry.doc.get("todo", type=Map)
    assert entry_field(column, "t1", key, "default") == entry.get(key, "default")
    assert entry_field(column, "t2", key, "default") == "default"


def test_a_field_holding_a_shared_type_or_no_entry_reads_as_the_default(entry: Map[Any]) -> None:
    column = entry.doc.get("todo", type=Map)
    assert entry_field(column, "t1", "output", "default") == "default"
    assert entry_field(column, "t1", "inner") is None
    assert output_length(column, "t1") == len(entry["output"]) == 2
    assert output_length(column, "t2") == 0


def test_shared_types_come_back_as_pycrdt_types(entry: Map[Any]) -> None:
    output = read_field(entry, "output")
    assert isinstance(output, Text) and str(output) == "hi"
    inner = read_field(entry, "inner")
    assert isinstance(inner, Map) and inner.get("k") == 1
    column = entry.doc.get("todo", type=Map)
    assert isinstance(read_field(column, "t1"), Map)
    assert read_field(column, "t2") is None


def test_items_read_as_map_items(entry: Map[Any]) -> None:
    def plain(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [(k, str(v) if isinstance(v, Text | Map) else v) for k, v in items]

    assert plain(read_items(entry)) == plain(list(entry.items()))
    column = entry.doc.get("todo", type=Map)
    [(key, value)] = read_items(column)
    assert key == "t1" and isinstance(value, Map)


def test_root_count_counts_what_doc_keys_lists(entry: Map[Any]) -> None:
    doc = entry.doc
    assert root_count(doc) == len(list(doc.keys())) == 1
    doc.get("done", type=Map)
    assert root_count(doc) == len(list(doc.keys())) == 2


def test_an_entry_reads_as_its_plain_fields(entry: Map[Any]) -> None:
    column = entry.doc.get("todo", type=Map)
    assert read_entry(column, "t1") == plain_fields(entry)
    assert read_entry(column, "t1")["output"] == "hi"
    assert read_entry(column, "missing") is None
    assert read_entry(column, "missing", "default") == "default"


def test_a_value_that_is_no_map_reads_as_not_a_map_of_map_get() -> None:
    doc: Doc[Any] = Doc()
    column = doc.get("todo", type=Map)
    column["plain"] = "x"
    column["none"] = None
    column["object"] = {"id": "object", "prompt": "a plain JSON object, not a Y.Map"}
    column["text"] = Text("t")
    assert read_entry(column, "plain") == NotAMap("x")
    assert read_entry(column, "none", "default") == NotAMap(None)  # a null value, not a missing key
    # Reads as a dict, as a map's fields would: only the wrapper tells them apart.
    assert read_entry(column, "object") == NotAMap(column["object"])
    text = read_entry(column, "text")
    assert isinstance(text, NotAMap) and isinstance(text.value, Text) and str(text.value) == "t"


def test_an_entry_with_values_json_lacks_reads_as_plain_fields() -> None:
    doc: Doc[Any] = Doc()
    column = doc.get("todo", type=Map)
    column["t"] = Map({"id": "t", "score": float("nan"), "big": float("inf")})
    assert read_entry(column, "t") == plain_fields(column["t"])
