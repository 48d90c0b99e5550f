"""A task's params checked for the backends."""

from __future__ import annotations

import pytest

from kanbanmesh.board.schema import TaskParams
from kanbanmesh.errors import BackendError
from worker.backends.llama_generate import DEFAULT_MAX_TOKENS, decoding_for
from worker.backends.sampling import sampling_from


def test_given_params_are_forwarded_as_given() -> None:
    sampling = sampling_from(TaskParams(max_tokens=5, temperature=0.0, stop=["x"], seed=3))
    assert sampling.given() == {"max_tokens": 5, "temperature": 0.0, "stop": ["x"], "seed": 3}
    assert sampling_from(TaskParams()).given() == {}


def test_engine_extras_are_accepted_and_whole_floats_from_the_crdt_are_ints() -> None:
    params = TaskParams.model_validate({"top_k": 20.0, "min_p": 0.1, "repeat_penalty": 1.3})
    decoding = decoding_for(sampling_from(params))
    assert decoding.top_k == 20 and isinstance(decoding.top_k, int)
    assert decoding.min_p == 0.1 and decoding.repeat_penalty == 1.3


def test_llama_defaults() -> None:
    decoding = decoding_for(sampling_from(TaskParams()))
    assert decoding.max_tokens == DEFAULT_MAX_TOKENS and decoding.temperature == 0.2
    assert decoding.seed is None and decoding.stops == ()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"temprature": 0.5}, "unknown parameter.*temprature"),
        ({"top_k": -1}, "top_k"),
        ({"stop": [""]}, "stop sequence must not be empty"),
        ({"min_p": 2}, "min_p"),
    ],
)
def test_bad_params_are_refused_with_the_reason(params: dict[str, object], match: str) -> None:
    with pytest.raises(BackendError, match=match) as caught:
        sampling_from(TaskParams.model_validate(params))
    assert caught.value.code == "bad_params"


def test_seed_out_of_llama_range_is_refused() -> None:
    with pytest.raises(BackendError, match="seed") as caught:
        decoding_for(sampling_from(TaskParams(seed=-1)))
    assert caught.value.code == "bad_params"
