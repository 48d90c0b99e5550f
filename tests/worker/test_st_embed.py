"""The sentence-transformers embedding backend on the bundled model: its vectors, its
refusals, and the batching of concurrent calls (a worker's slots) into shared rounds."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
import torch

from kanbanmesh.errors import BackendError
from tests.e2e.embed_workers import SharedModelBackend, reference
from worker.backends.embedding_base import EmbeddingBackend, EmbeddingRequest, Embeddings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXTS = [f"sentence number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(12)]


async def test_concurrent_calls_share_rounds_and_get_their_own_vectors(
    st_backend: SharedModelBackend, reference_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(st_backend, EmbeddingBackend)
    rounds: list[int] = []
    run_round = st_backend._embed_jobs

    threads: set[int] = set()

    def counting(jobs: list[Any]) -> None:
        rounds.append(len(jobs))
        run_round(jobs)
        threads.add(torch.get_num_threads())  # in the thread that ran the round

    monkeypatch.setattr(st_backend, "_embed_jobs", counting)
    results: dict[int, Embeddings] = {}

    async def one(i: int) -> None:
        results[i] = await st_backend.embed(EmbeddingRequest(inputs=[TEXTS[i]]))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(len(TEXTS)):
                tg.start_soon(one, i)
    expected = reference(reference_model, TEXTS)
    for i, found in results.items():
        assert found.vectors.shape == (1, 384)
        assert np.allclose(found.vectors[0], expected[i], atol=1e-5), i
        assert found.prompt_tokens > 2
    assert sum(rounds) == len(TEXTS) and len(rounds) < len(TEXTS), rounds
    assert threads == {1}  # the backend's `threads`, whichever worker thread ran the round


async def test_a_bad_call_fails_alone_and_cancelled_waiters_leave_the_queue(
    st_backend: SharedModelBackend, reference_model: object
) -> None:
    outcomes: dict[str, Any] = {}

    async def call(name: str, inputs: list[Any]) -> None:
        try:
            outcomes[name] = await st_backend.embed(EmbeddingRequest(inputs=inputs))
        except BackendError as exc:
            outcomes[name] = exc

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "good", ["hello"])
            tg.start_soon(call, "bad", [[10**9]])
            tg.start_soon(call, "long", [[7592] * 1000])
            with anyio.CancelScope() as gone:
                gone.cancel()
                await st_backend.embed(EmbeddingRequest(inputs=["never embedded"]))
        # After a cancelled waiter, the backend still serves.
        after = await st_backend.embed(EmbeddingRequest(inputs=["hello"]))
    assert isinstance(outcomes["bad"], BackendError) and outcomes["bad"].code == "invalid_input"
    assert isinstance(outcomes["long"], BackendError) and outcomes["long"].code == "input_too_long"
    assert np.allclose(outcomes["good"].vectors[0], reference(reference_model, ["hello"])[0], atol=1e-5)
    assert np.allclose(after.vectors, outcomes["good"].vectors, atol=1e-6)
    with pytest.raises(BackendError) as refused:
        await st_backend.embed(EmbeddingRequest(inputs=["x"], model="another-model"))
    assert refused.value.code == "unknown_model"
    with pytest.raises(BackendError) as refused:
        await st_backend.embed(EmbeddingRequest(inputs=["x"], dimensions=100))
    assert refused.value.code == "dimensions_unsupported"
