"""The baseline: llama-cpp-python called directly, the way its users call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_cpp import Llama

from worker.backends.llama_loader import LoadOptions, extra_buffers_safe, load_llama


def direct_llama(path: Path, *, n_ctx: int, threads: int) -> Llama:
    """A plain `Llama` for baselines (through the AMX guard: this machine must not crash)."""
    return load_llama(path, LoadOptions(n_ctx=n_ctx, threads=threads, extra_buffers=extra_buffers_safe()))


def direct_chat(llama: Llama, messages: list[dict[str, str]], **params: Any) -> str:
    """`create_chat_completion` from a clean KV cache, as a fresh `Llama` would answer."""
    llama.reset()  # type: ignore[no-untyped-call]
    reply: Any = llama.create_chat_completion(messages=messages, **params)  # type: ignore[arg-type]
    return str(reply["choices"][0]["message"]["content"])
