"""A property of the OpenAI-compatible endpoint: whatever body a client sends, it gets a JSON
answer (or, for a valid streaming request, server-sent events ending in `[DONE]`) with a
status under 500, on a keep-alive connection that stays usable, and the server keeps serving.

The mesh (server, embedded broker, an echo worker) runs in a background event loop while
Hypothesis draws bodies in this thread: valid requests with keys given random types, random
extra keys, nested and wide values, the deep nesting no JSON parser should recurse into, and
bytes that are not JSON at all.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

# The mesh's websockets draw from `random` in the background thread (keepalive pings):
# Hypothesis would take that for a strategy using `random` (as in tests/server/test_fuzz.py).
RANDOM_IN_BACKGROUND = "Do not use the `random` module inside strategies"
pytestmark = pytest.mark.filterwarnings(f"ignore:{RANDOM_IN_BACKGROUND}")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
KNOWN_KEYS = (
    "model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "top_k",
    "min_p", "repeat_penalty", "n", "best_of", "logprobs", "top_logprobs", "logit_bias", "tools",
    "tool_choice", "functions", "function_call", "response_format", "suffix", "echo", "user",
    "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "audio",
    "prediction", "conversation", "rag",
)

json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Values a client could plausibly mean for the known keys, to get past the first check.
plausible = st.sampled_from([
    "echo", "", 0, 1, 2, 0.5, 1.0, -1, 10**7, 2**64, True, False, [], {}, "none", "auto",
    ["stop"], {"include_usage": True}, {"type": "text"}, {"type": "json_object"},
    {"collection": "no-such-collection"}, {"collection": "x", "k": 2}, [{"type": "function"}],
])
good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer"]), "content": st.text(max_size=20)})
message = good_message | st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "tool", "wizard"]), "content": st.text(max_size=20) | json_value},
    optional={"name": json_value, "tool_calls": json_value, "extra": json_value},
)
# Values near what the API takes, for the keys it takes them in (all valid or neutral).
good_values: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": st.integers(1, 50), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=3), "seed": st.integers(-100, 100),
    "presence_penalty": st.floats(-2, 2), "top_k": st.integers(0, 100), "n": st.just(1),
    "stream": st.booleans(), "stream_options": st.just({"include_usage": True}),
    "user": st.text(max_size=8), "metadata": st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
    "logprobs": st.just(False), "tools": st.just([]), "response_format": st.just({"type": "text"}),
    "conversation": st.text(min_size=1, max_size=8),
}


@st.composite
def bodies(draw: st.DrawFn, endpoint: str) -> bytes:
    """A request body for `endpoint`: a valid request, one with keys of random types or extra
    keys, one with a deep or wide value, or anything at all."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "deep", "wide", "raw", "value"]))
    if kind == "raw":
        return draw(st.binary(max_size=64))
    if kind == "value":
        return json.dumps(draw(json_value)).encode()
    body: dict[str, Any] = {"model": draw(st.sampled_from(["echo", "", "other"]))}
    if endpoint.endswith("chat/completions"):
        body["messages"] = draw(st.lists(good_message, min_size=1, max_size=3))
    else:
        body["prompt"] = draw(st.text(max_size=20))
    for key in draw(st.lists(st.sampled_from(list(good_values)), max_size=4, unique=True)):
        body[key] = draw(good_values[key])
    if kind == "mutated":
        for key in draw(st.lists(st.sampled_from(KNOWN_KEYS), min_size=1, max_size=3, unique=True)):
            body[key] = draw(plausible | json_value | st.lists(message | json_value, max_size=3))
        for key in draw(st.lists(st.text(max_size=10), max_size=2)):
            body[key] = draw(json_value)
        for key in draw(st.lists(st.sampled_from(list(body)), max_size=1)):
            body.pop(key, None)
    raw = json.dumps(body)
    if kind in ("valid", "mutated"):
        return raw.encode()
    # Deep or wide, where a key holds it: no JSON encoder writes 5,000 levels, so by hand.
    key = draw(st.sampled_from(KNOWN_KEYS))
    if kind == "deep":
        depth = draw(st.integers(30, 5000))
        value = draw(st.sampled_from(["[", '{"a":'])) * depth
        value += ("]" if value.startswith("[") else "}") * depth
    else:
        value = json.dumps([draw(json_leaf)] * draw(st.integers(1000, 20_000)))
    body.pop(key, None)
    inner = json.dumps(body)[1:-1]
    return ("{" + inner + ("," if inner else "") + json.dumps(key) + ":" + value + "}").encode()


@asynccontextmanager
async def mesh(data_dir: Path) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=data_dir, queue_timeout_s=5.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        await WorkerPool(url, tg).start()
        yield "http" + url[2:]
        tg.cancel_scope.cancel()


@pytest.fixture
def http(tmp_path: Path) -> Iterator[httpx.Client]:
    """A keep-alive client of one connection to a running mesh."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(mesh(tmp_path)) as base_url,
        httpx.Client(base_url=base_url, timeout=15, limits=httpx.Limits(max_connections=1)) as client,
    ):
        yield client


def check_answer(reply: httpx.Response, body: bytes) -> None:
    where = f"{reply.status_code} for {body[:200]!r}: {reply.text[:300]}"
    assert reply.status_code < 500, where
    if reply.headers["content-type"].startswith("text/event-stream"):
        assert reply.status_code == 200, where
        assert reply.text.rstrip().endswith("data: [DONE]"), where
        return
    assert reply.headers["content-type"].startswith("application/json"), where
    answer = reply.json()
    if reply.status_code == 200:
        assert answer["choices"], where
    else:
        assert set(answer["error"]) == {"message", "type", "param", "code"}, where


def test_any_body_gets_a_json_answer_under_500_and_the_server_keeps_serving(http: httpx.Client) -> None:
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), endpoint=st.sampled_from(ENDPOINTS))
    def any_body(data: st.DataObject, endpoint: str) -> None:
        body = data.draw(bodies(endpoint))
        reply = http.post(endpoint, content=body, headers={"content-type": "application/json"})
        check_answer(reply, body)

    any_body()
    # After all of it, on the same keep-alive connection: a valid request gets its answer.
    reply = http.post("/v1/chat/completions", json={
        "model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "echo: hi"
