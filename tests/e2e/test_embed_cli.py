"""The embedding commands as a user runs them: `kanbanmesh up --embedding-workers`, which
starts `kanbanmesh worker --backend st-embed` processes, and `kanbanmesh embed`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from kanbanmesh.embedding_models import DEFAULT_MODEL
from tests.conftest import anyio_deadline, cli, free_port
from tests.e2e.embed_workers import reference

pytestmark = pytest.mark.slow


@pytest.fixture
def mesh_up(tmp_path: Path) -> Iterator[str]:
    """`kanbanmesh up` with one echo worker and one embedding worker, in a child process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANBANMESH_")}
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        cli("up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--backend", "echo",
            "--workers", "1", "--embedding-workers", "1", "--threads", "1"),
        stdout=log, stderr=log, env=env,
    )
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def embed_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli("embed", "--url", url, *args), check=False, capture_output=True, text=True,
                          timeout=120)


def test_up_starts_embedding_workers_and_embed_prints_vectors(mesh_up: str, reference_model: object) -> None:
    texts = ["a first sentence", "and a second one"]
    deadline = anyio_deadline(180)
    while True:  # until the embedding worker has loaded its model and joined
        done = embed_cli(mesh_up, *texts, "--json", "--timeout", "10")
        if done.returncode == 0:
            break
        deadline.check()
    found = json.loads(done.stdout)
    assert found["model"] == DEFAULT_MODEL and found["dimensions"] == 384
    assert found["usage"]["prompt_tokens"] == found["usage"]["total_tokens"] > 0
    assert np.allclose(np.array(found["embeddings"]), reference(reference_model, texts), atol=1e-5)
    lines = embed_cli(mesh_up, "hello").stdout.splitlines()
    assert len(lines) == 1 and np.allclose(json.loads(lines[0]), reference(reference_model, ["hello"])[0], atol=1e-5)
    refused = embed_cli(mesh_up, "hello", "--dimensions", "8")
    assert refused.returncode == 1 and "dimensions_unsupported" in refused.stderr
    # The chat worker still answers chats beside it, on the same port as /v1/embeddings.
    with openai.OpenAI(base_url="http" + mesh_up[2:] + "/v1", api_key="unused", max_retries=0) as client:
        chat = client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
        vector = client.embeddings.create(model=DEFAULT_MODEL, input="hello").data[0].embedding
    assert chat.choices[0].message.content == "echo: hi"
    assert np.allclose(vector, reference(reference_model, ["hello"])[0], atol=1e-5)
