"""Embed tasks end to end: the SDK, the board, the broker's routing by kind and a real
sentence-transformers worker on the bundled model."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from client_sdk import AsyncClient, Client, InvalidTaskError, TaskFailedError, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.embeddings import MAX_EMBED_INPUTS
from kanbanmesh.embedding_models import DEFAULT_MODEL
from kanbanmesh.protocol import codec
from tests.conftest import WorkerPool
from tests.e2e.embed_workers import reference
from tests.e2e.test_faults import refused_with, task_update

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXTS = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force.", "hello"]


async def test_sdk_embed_gives_the_models_vectors(
    server_url: str, embed_workers: WorkerPool, reference_model: object
) -> None:
    await embed_workers.start(slots=2)
    async with AsyncClient(server_url, owner="alice") as client:
        await client.wait_for_workers(1, kind="embed", timeout_s=30)
        with anyio.fail_after(60):
            found = await client.embed(TEXTS)
        handle = await client.submit_embed("one text", model=DEFAULT_MODEL)
        with anyio.fail_after(60):
            single = await handle.embeddings()
        _, entry = handle.entry()
    assert found.vectors.shape == (3, 384) and found.vectors.dtype == np.float32
    assert np.allclose(found.vectors, reference(reference_model, TEXTS), atol=1e-5)
    assert found.model == DEFAULT_MODEL and found.usage.prompt_tokens > len(TEXTS)
    assert found.usage.total_tokens == found.usage.prompt_tokens
    assert np.allclose(single.vectors, reference(reference_model, ["one text"]), atol=1e-5)
    assert entry.status is TaskStatus.SUCCEEDED and entry.output == "" and entry.dimensions == 384
    assert entry.result == "" and entry.finish_reason is None


async def test_token_arrays_and_concurrent_tasks(
    server_url: str, embed_workers: WorkerPool, reference_model: object
) -> None:
    await embed_workers.start(slots=4)
    tokenizer = reference_model.tokenizer  # type: ignore[attr-defined]
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    async with AsyncClient(server_url) as client:
        await client.wait_for_workers(1, kind="embed", timeout_s=30)
        handles = [await client.submit_embed([text, ids]) for text in TEXTS]
        with anyio.fail_after(60):
            results = [await handle.embeddings() for handle in handles]
    expected_ids = reference(reference_model, ["hello world"])[0]
    for text, result in zip(TEXTS, results, strict=True):
        assert np.allclose(result.vectors[0], reference(reference_model, [text])[0], atol=1e-5)
        assert np.allclose(result.vectors[1], expected_ids, atol=1e-5)


async def test_worker_refusals_fail_the_task(server_url: str, embed_workers: WorkerPool) -> None:
    await embed_workers.start()
    async with AsyncClient(server_url) as client:
        await client.wait_for_workers(1, kind="embed", timeout_s=30)
        with anyio.fail_after(60), pytest.raises(TaskFailedError) as refused:
            await client.embed(["x"], dimensions=128)
        assert refused.value.code == "dimensions_unsupported"
        with anyio.fail_after(60), pytest.raises(TaskFailedError) as refused:
            await client.embed([[7592] * 300])
        assert refused.value.code == "input_too_long"
        with anyio.fail_after(60), pytest.raises(TaskFailedError) as refused:
            await client.embed([[10**9]])
        assert refused.value.code == "invalid_input"


async def test_sdk_refuses_bad_inputs(server_url: str) -> None:
    async with AsyncClient(server_url) as client:
        for bad in ([], [""], ["x"] * (MAX_EMBED_INPUTS + 1), [[-1]], [["a"]]):
            with pytest.raises(InvalidTaskError):
                await client.submit_embed(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidTaskError):
            await client.submit("p", input=["x"])  # a chat task carries no `input`


async def test_kinds_route_apart(server_url: str, embed_workers: WorkerPool, workers: WorkerPool) -> None:
    """A chat task never reaches the embedding worker, an embed task never the chat worker;
    an embed task for a model nobody serves waits in `todo`, as a chat task does."""
    embedder = await embed_workers.start(slots=4, name="embedder")
    chatter = await workers.start(slots=4, name="chatter")
    async with AsyncClient(server_url) as client:
        await client.wait_for_workers(2, timeout_s=30)
        chats = [await client.submit(f"chat {i}") for i in range(6)]
        embeds = [await client.submit_embed([f"text {i}"]) for i in range(6)]
        stray = await client.submit_embed(["x"], model="no-such-model")
        with anyio.fail_after(60):
            chat_entries = [await handle.result() for handle in chats]
            embed_entries = [await handle.result() for handle in embeds]
        assert {e.worker for e in chat_entries} == {chatter.id}
        assert {e.worker for e in embed_entries} == {embedder.id}
        assert all(e.result and e.result.startswith("echo") for e in chat_entries)
        column, _ = stray.entry()
        assert column.value == "todo"
        await stray.cancel()


async def test_blocking_client_embeds(server_url: str, embed_workers: WorkerPool) -> None:
    await embed_workers.start()

    def use_blocking_client() -> tuple[int, int]:
        with Client(server_url) as client:
            client.wait_for_workers(1, kind="embed", timeout_s=30)
            found = client.embed(["a", "b"], timeout_s=60)
            handle = client.submit_embed(["c"])
            return found.vectors.shape[0], handle.embeddings(timeout_s=60).dimensions

    with anyio.fail_after(90):
        assert await anyio.to_thread.run_sync(use_blocking_client) == (2, 384)


async def test_a_short_embedding_finishes_in_one_write_a_long_one_is_seen_started(
    server_url: str, embed_workers: WorkerPool
) -> None:
    """An embed task goes `prepared -> done` in one write when it takes milliseconds, and is
    written to `doing` once it runs long, before the broker's start deadline."""
    await embed_workers.start()
    async with AsyncClient(server_url) as client:
        await client.wait_for_workers(1, kind="embed", timeout_s=30)

        async def columns_of(inputs: list[str]) -> set[str]:
            handle = await client.submit_embed(inputs)
            seen: set[str] = set()
            with anyio.fail_after(120):
                while True:
                    column, _ = handle.entry()
                    seen.add(column.value)
                    if column.value == "done":
                        break
                    await client.wait_changed(0.05)
            await handle.embeddings()
            return seen

        await client.embed(["the model's first pass is slower: not measured"])
        short = await columns_of(["one short text"])
        long = await columns_of([f"input {i}: " + "a few more words to read " * 8 for i in range(150)])
    assert "doing" not in short
    assert "doing" in long


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"prompt": "p", "input": ["x"]}, "belong to an embed task"),
        ({"prompt": "p", "dimensions": 8}, "belong to an embed task"),
        ({"kind": "embed", "input": ["x"], "prompt": "p"}, "not `messages` or `prompt`"),
        ({"kind": "embed", "input": ["x"], "rag": {"collection": "c"}}, "no `rag`"),
        ({"kind": "embed"}, "needs `input`"),
        ({"kind": "embed", "input": []}, "input"),
        ({"kind": "embed", "input": ["x"] * (MAX_EMBED_INPUTS + 1)}, "input"),
        ({"kind": "embed", "input": [[-1]]}, "input"),
        ({"kind": "embed", "input": ["x"], "dimensions": 0}, "dimensions"),
        ({"kind": "unknown", "prompt": "p"}, "kind"),
    ],
)
async def test_the_server_refuses_malformed_embed_and_chat_entries(
    server_url: str, fields: dict[str, object], reason: str
) -> None:
    """What a stock client writes straight into `todo` is held to the same schema."""
    code, said = await refused_with(server_url, codec.sync_update(task_update("t1", {"id": "t1", **fields})))
    assert code == c.CLOSE_INVALID_TASK and reason in said, said
