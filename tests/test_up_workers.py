"""`kanbanmesh up` starts its workers with a command line: what the user set for the workers
must reach them through it (the worker parses it with its own CLI, as the child process will)."""

from __future__ import annotations

import pytest

from kanbanmesh.cli import build_settings
from kanbanmesh.cli import worker as worker_cli
from kanbanmesh.commands.up import embedding_worker_command, worker_command
from kanbanmesh.settings import Settings

# The settings `up` hands down to every worker, whatever the backend.
WORKER_FIELDS = ("board", "backend", "slots", "heartbeat_s", "drain_timeout_s", "model")
BACKEND_FIELDS = {
    "echo": ("echo_delay_ms",),
    "llama": ("n_ctx", "threads", "cache_prompt", "cache_ram_mb"),
    "openai": ("base_url",),
}


def _as_the_worker_reads_it(command: list[str]) -> Settings:
    assert command[1:4] == ["-m", "kanbanmesh", "worker"]
    context = worker_cli.make_context("worker", command[4:])
    flags = dict(context.params)
    flags.pop("drain_target")
    return build_settings(**flags)


@pytest.mark.parametrize(
    "given",
    [
        {"backend": "echo", "echo_delay_ms": 7, "heartbeat_s": 2.5, "drain_timeout_s": 9.0, "slots": 3},
        {"backend": "llama", "n_ctx": 1024, "threads": 2, "cache_prompt": False, "cache_ram_mb": 64,
         "heartbeat_s": 4.0, "drain_timeout_s": 0.0, "board": "team-a"},
        {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "heartbeat_s": 1.5},
    ],
)
def test_the_workers_get_what_up_was_given(given: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KANBANMESH_HEARTBEAT_S", "KANBANMESH_DRAIN_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.model_validate(given)
    seen = _as_the_worker_reads_it(worker_command(settings, "ws://127.0.0.1:1", 0))
    for field in WORKER_FIELDS + BACKEND_FIELDS[settings.backend]:
        assert getattr(seen, field) == getattr(settings, field), field


def test_embedding_workers_run_st_embed_on_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KANBANMESH_HEARTBEAT_S", "KANBANMESH_THREADS", "KANBANMESH_MODEL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.model_validate({"backend": "llama", "model": "/some/llm.gguf", "threads": 1,
                                        "heartbeat_s": 3.0, "board": "team-a", "embedding_workers": 2})
    seen = _as_the_worker_reads_it(embedding_worker_command(settings, "ws://127.0.0.1:1", 1))
    assert seen.backend == "st-embed" and seen.model == "" and seen.name == "st-embed-2"
    assert (seen.threads, seen.heartbeat_s, seen.board) == (1, 3.0, "team-a")
