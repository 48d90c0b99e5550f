"""A task's `params` checked once for what an LLM backend can honour.

`TaskParams` (the board schema) keeps unknown keys, so a client can pass engine-specific
knobs. A backend accepts the documented ones below and refuses anything else with
`bad_params`, so a typo such as `temprature` fails loudly instead of being ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kanbanmesh.board.schema import TaskParams
from kanbanmesh.errors import BackendError

# Beyond the schema's five fields: the sampling knobs llama.cpp and most OpenAI-compatible
# servers (llama.cpp server, vLLM) understand, and llama-server's `cache_prompt`.
EXTRA_KEYS = ("top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "cache_prompt")


class Sampling(BaseModel):
    """The sampling request as given: None means "the backend's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Reuse a cached prefix of the prompt (llama-server's; on by default). Off, the prompt is
    # read from an empty sequence: what the answer may depend on is the request alone.
    cache_prompt: bool | None = None
    # Log probabilities of the generated tokens (checked by `TaskParams`; a backend that
    # cannot give them refuses the task).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def given(self) -> dict[str, Any]:
        """The fields the client set (for forwarding to another server as they are; not
        `cache_prompt`, which the engine serving them decides)."""
        fields = self.model_dump(exclude_none=True, exclude={"cache_prompt"})
        if not self.stop:
            fields.pop("stop", None)
        else:
            fields["stop"] = list(self.stop)
        return fields


def sampling_from(params: TaskParams) -> Sampling:
    """Check `params` for a backend; raises `BackendError("bad_params")` with the reason."""
    raw = params.model_dump(exclude_none=True)
    unknown = sorted(set(raw) - set(Sampling.model_fields))
    if unknown:
        known = ", ".join(sorted(Sampling.model_fields))
        raise BackendError("bad_params", f"unknown parameter(s) {', '.join(unknown)}; known: {known}")
    if any(s == "" for s in raw.get("stop", ())):
        raise BackendError("bad_params", "a stop sequence must not be empty")
    try:
        return Sampling.model_validate(_whole_numbers(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise BackendError("bad_params", problems) from None


def _whole_numbers(raw: dict[str, Any]) -> dict[str, Any]:
    # Numbers come back from the CRDT as floats (JS semantics): 40.0 is a valid top_k.
    return {
        k: int(v) if k in ("top_k", "seed", "max_tokens", "top_logprobs") and isinstance(v, float) and v.is_integer() else v
        for k, v in raw.items()
    }
