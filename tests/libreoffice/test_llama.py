"""The extension with the bundled model (SmolLM2) behind the mesh: a real answer streams into
a real Writer document."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.backend_workers import Shared, running_worker
from tests.libreoffice.conftest import Office
from tests.worker.llama_direct import started_backend
from worker.backends.llama import LlamaBackend
from worker.backends.models import BUNDLED_NAME

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXT = (
    "Kanban boards show work as cards moving through columns. Teams see at a glance what is "
    "waiting, what is in progress and what is done, and limit how much work runs at once."
)


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaBackend]:
    with started_backend(n_ctx=1024, threads=1, slots=1) as loaded:
        yield loaded


async def test_the_bundled_model_summarizes_into_the_document(
    office: Office, server_url: str, backend: LlamaBackend
) -> None:
    async with running_worker(server_url, Shared(backend)):
        report = await office.run({
            "paragraphs": ["Notes", TEXT],
            "select": {"paragraph": 1, "start": 0, "end": len(TEXT)},
            "settings": {"url": server_url, "board": "default", "token": "",
                         "model": BUNDLED_NAME, "max_tokens": 48},
            "command": "Summarize",
        }, timeout_s=120)
    assert report["state"] == "success", report
    result = report["result"]
    assert result["status"] == "succeeded" and result["result"].strip()
    assert result["inserted"] == result["result"]
    assert result["batches"] > 1, "the answer must be inserted as it streams"
    assert report["paragraphs"] == ["Notes", TEXT, *result["result"].split("\n")]
