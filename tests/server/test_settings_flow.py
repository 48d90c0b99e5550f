"""Server settings reach the parts they set: from a flag, from the environment."""

from __future__ import annotations

import pytest

from kanbanmesh.cli import build_settings
from kanbanmesh.server.runner import hub_settings
from kanbanmesh.settings import Settings


def test_the_middleware_timeout_reaches_the_hub_from_a_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hub_settings(Settings()).middleware_timeout_s == 120.0
    assert hub_settings(build_settings(middleware_timeout_s=7.5, port=None)).middleware_timeout_s == 7.5
    monkeypatch.setenv("KANBANMESH_MIDDLEWARE_TIMEOUT_S", "9")
    assert hub_settings(Settings()).middleware_timeout_s == 9.0


def test_a_middleware_timeout_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="middleware_timeout_s"):
        Settings(middleware_timeout_s=0)
