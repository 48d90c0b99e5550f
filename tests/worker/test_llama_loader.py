"""Model files, the AMX guard and model params."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from kanbanmesh.errors import BackendError
from worker.backends.llama_loader import (
    LoadOptions,
    extra_buffers_safe,
    load_llama,
    read_vocabulary,
)
from worker.backends.models import BUNDLED_NAME, resolve_model

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile amx_int8\n"
AMD_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 only")
def test_extra_buffers_are_off_where_the_cpu_advertises_amx() -> None:
    assert extra_buffers_safe(AMX_CPU) is False
    assert extra_buffers_safe(AMD_CPU) is True


def test_the_bundled_model_is_found_and_named(bundled_gguf: Path) -> None:
    model = resolve_model("")
    assert model.path == bundled_gguf and model.path.suffix == ".gguf"
    assert model.names == (BUNDLED_NAME, "SmolLM2-135M-Instruct.Q4_1")


def test_a_missing_or_bad_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist") as caught:
        resolve_model(tmp_path / "nope.gguf")
    assert caught.value.code == "model_not_found"
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf")
    with pytest.raises(BackendError, match="cannot read bogus.gguf") as caught:
        read_vocabulary(bogus)
    assert caught.value.code == "model_load_failed"


def test_the_guarded_load_really_turns_extra_buffers_off(bundled_gguf: Path) -> None:
    # Llama(use_extra_bufts=False) would be silently ignored (**kwargs); check the C params.
    llama = load_llama(bundled_gguf, LoadOptions(n_ctx=64, threads=1, extra_buffers=False))
    try:
        assert llama.model_params.use_extra_bufts is False
    finally:
        llama.close()
