"""Fixtures for the backend tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.model_files import bundled_model, template_free_model


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    return bundled_model()


@pytest.fixture(scope="session")
def template_free_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return template_free_model(tmp_path_factory.mktemp("gguf"))
