"""An embed entry's vectors: the schema takes only as many as inputs, each of `dimensions`
float32 values; a reader refuses any vector holding a value that is not finite. Classes of
input (hypothesis), not examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanbanmesh.board.document import entry_from_fields
from kanbanmesh.board.embeddings import decode_vectors, encode_vector, encode_vectors
from kanbanmesh.errors import InvalidTaskError

finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


def embed_entry(inputs: int, dimensions: int, vectors: list[str]) -> dict[str, object]:
    return {"id": "t", "kind": "embed", "input": ["x"] * inputs, "status": "succeeded",
            "dimensions": dimensions, "embeddings": vectors}


@given(inputs=st.integers(1, 6), dimensions=st.integers(1, 40), data=st.data())
def test_only_one_vector_of_dimensions_values_per_input_is_an_entry(inputs: int, dimensions: int,
                                                                   data: st.DataObject) -> None:
    widths = data.draw(st.lists(st.integers(1, 41), min_size=0, max_size=7))
    vectors = [encode_vector(np.zeros(width, dtype=np.float32)) for width in widths]
    fits = len(widths) == inputs and all(width == dimensions for width in widths)
    if fits:
        entry = entry_from_fields(embed_entry(inputs, dimensions, vectors))
        assert decode_vectors(entry.embeddings or [], dimensions).shape == (inputs, dimensions)
    else:
        with pytest.raises(InvalidTaskError):
            entry_from_fields(embed_entry(inputs, dimensions, vectors))


def test_vectors_belong_to_an_embed_task_with_its_dimensions() -> None:
    vector = [encode_vector(np.zeros(2, dtype=np.float32))]
    for fields in ({"id": "t", "prompt": "x", "embeddings": vector},
                   {"id": "t", "kind": "embed", "input": ["x"], "embeddings": vector}):
        with pytest.raises(InvalidTaskError):
            entry_from_fields(fields)


@given(values=st.lists(finite, min_size=1, max_size=20), data=st.data())
def test_a_vector_that_is_not_finite_is_refused(values: list[float], data: st.DataObject) -> None:
    assert np.array_equal(decode_vectors([encode_vector(values)], len(values))[0],
                          np.asarray(values, dtype=np.float32))
    where = data.draw(st.integers(0, len(values) - 1))
    values[where] = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    rows = np.asarray([values, [0.0] * len(values)], dtype=np.float32)[:: data.draw(st.sampled_from([1, -1]))]
    with pytest.raises(InvalidTaskError, match="not finite"):
        decode_vectors(encode_vectors(rows), len(values))
