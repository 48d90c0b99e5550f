"""Loading a GGUF into llama-cpp-python without meeting the AMX segfault.

llama.cpp's CPU backend offers "extra buffer types" for weights: AMX tiles on CPUs that
advertise AMX, and repacked layouts (q4_0/q4_K/iq4_nl) elsewhere. On the AMX machines this
project runs on, the AMX kernels fault at the first decode (`ggml_backend_amx_mul_mat`).
Turning `use_extra_bufts` off in the model params avoids it, at the price of the repacking
speed-up, so it is turned off only where the CPU advertises AMX.

`Llama(use_extra_bufts=False)` does NOT do that: the constructor swallows unknown keyword
arguments. The flag has to be set on `llama_model_params` before the model is loaded, which
`_NoExtraBuffersLlama` does.

`llama_cpp._internals.LlamaModel` is no public API: llama-cpp-python is pinned to one version
in pyproject.toml, and tests/test_library_internals.py names what is used of it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama
from llama_cpp._internals import LlamaModel

from kanbanmesh.errors import BackendError
from worker.backends.chat_format import Specials

_CPUINFO = Path("/proc/cpuinfo")


class _NoExtraBuffersLlama(Llama):
    """A `Llama` whose model params have `use_extra_bufts` off from the moment they exist."""

    # Llama.__init__ creates `self.model_params` and loads the model in the same call; a
    # property is the one place to change the params in between.
    @property
    def model_params(self) -> Any:
        return self._kanbanmesh_model_params

    @model_params.setter
    def model_params(self, params: Any) -> None:
        params.use_extra_bufts = False
        self._kanbanmesh_model_params = params


def extra_buffers_safe(cpuinfo: str | None = None) -> bool:
    """Whether llama.cpp's extra buffer types may be used on this CPU (not where AMX is)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return True  # AMX is an x86 extension
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            return False  # cannot tell: take the safe path
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return not any(flag.startswith("amx") for flag in flags.split())


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int
    threads: int
    extra_buffers: bool
    # Embedding mode: a context that outputs pooled vectors instead of logits, and reads a
    # whole batch (up to n_ctx tokens) in one pass, as pooling over a sequence needs.
    embedding: bool = False
    pooling_type: int = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
    # `Llama`'s own default is off; the worker's engine runs with it on (`llama_engine`).
    flash_attn: bool = False


def load_llama(path: Path, options: LoadOptions) -> Llama:
    """Load `path` for generation (or embedding); raises `BackendError("model_load_failed")`."""
    cls = Llama if options.extra_buffers else _NoExtraBuffersLlama
    embedding: dict[str, Any] = {}
    if options.embedding:
        embedding = {"embedding": True, "pooling_type": options.pooling_type,
                     "n_batch": options.n_ctx, "n_ubatch": options.n_ctx}
    try:
        return cls(
            model_path=str(path),
            n_ctx=options.n_ctx,
            n_threads=options.threads,
            n_threads_batch=options.threads,
            flash_attn=options.flash_attn,
            verbose=False,
            **embedding,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise BackendError("model_load_failed", f"cannot load {path.name} as a GGUF model: {exc}") from exc


def read_vocabulary(path: Path) -> tuple[dict[str, str], Specials]:
    """A GGUF's metadata and special tokens, read without loading weights or a context."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        model = LlamaModel(path_model=str(path), params=params, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise BackendError("model_load_failed", f"cannot read {path.name} as a GGUF model: {exc}") from exc
    try:
        return model.metadata(), _specials(model)
    finally:
        model.close()  # type: ignore[no-untyped-call]


def _specials(model: LlamaModel) -> Specials:
    eos, bos = model.token_eos(), model.token_bos()
    return Specials(
        bos_text=model.token_get_text(bos) if bos != -1 else "",
        eos_text=model.token_get_text(eos) if eos != -1 else "",
        eos_id=eos,
    )
