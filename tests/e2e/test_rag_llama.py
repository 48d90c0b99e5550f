"""Retrieval with the real bundled LLM (SmolLM2-135M): the answer is generated from a prompt
that holds the retrieved chunks, trimmed to the model's context, and the done entry cites the
sources the prompt kept."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

import anyio
import pytest

from client_sdk import AsyncClient, RagSpec, TaskStatus
from kanbanmesh.board.schema import ChatMessage, TaskParams
from tests.e2e.backend_workers import running_worker
from tests.rag.fixtures import DOCS_COLLECTION
from tests.worker.llama_direct import started_backend
from worker.backends.base import GenerationEvent, GenerationRequest
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CTX = 1024


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaBackend]:
    with started_backend(n_ctx=N_CTX, threads=1, slots=1) as loaded:
        yield loaded


class Recording:
    """A started llama backend lent to a worker (its `stop()` leaves it loaded), keeping every
    request; `fits` passes through, so the worker trims as it would on the backend itself."""

    def __init__(self, backend: LlamaBackend) -> None:
        self._backend = backend
        self.engine, self.models = backend.engine, backend.models
        self.requests: list[GenerationRequest] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def fits(self, messages: list[ChatMessage], params: TaskParams) -> bool:
        return self._backend.fits(messages, params)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        async for event in self._backend.generate(request):
            yield event


async def test_the_bundled_llm_answers_from_retrieved_chunks_trimmed_to_its_context(
    rag_server: str, llama: LlamaBackend
) -> None:
    backend = Recording(llama)
    question = "How long do finished tasks stay on the live board?"
    params = {"max_tokens": 48, "temperature": 0.0, "seed": 3}
    async with running_worker(rag_server, backend), AsyncClient(rag_server) as client:
        with anyio.fail_after(120):
            few = await (await client.submit(question, params=params, rag=RagSpec(collection=DOCS_COLLECTION, k=2))).result()
            many = await (await client.submit(question, params=params, rag=RagSpec(collection=DOCS_COLLECTION, k=12))).result()
    for entry in (few, many):
        assert entry.status is TaskStatus.SUCCEEDED and entry.result and entry.citations
        assert entry.usage is not None and entry.usage.prompt_tokens + entry.usage.completion_tokens <= N_CTX
    assert few.citations is not None and len(few.citations) == 2
    assert many.context is not None and len(many.context) == 12
    assert many.citations is not None and 1 <= len(many.citations) < 12, "trimmed to fit 1024 tokens"
    kept = backend.requests[1].messages
    assert kept is not None
    assert all(chunk.text in kept[-1].content for chunk in many.context[: len(many.citations)])
    assert many.context[-1].text not in kept[-1].content, "the lowest-ranked chunks went first"
    assert any(c.source == "docs/protocol.md" and "Retention" in c.heading for c in few.citations)
