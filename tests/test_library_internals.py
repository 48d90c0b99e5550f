"""What kanbanmesh uses of its libraries below their public API, pinned.

uvicorn's websockets-sansio protocol (kanbanmesh/server/direct_ws.py), pycrdt's transactions
and integrated types (kanbanmesh/board/reads.py, document.py, events.py) and
llama-cpp-python's `_internals` (worker/backends/llama.py, llama_loader.py, llama_embed.py) are no
public API, nor is the rule table of llama-cpp-python's JSON-Schema-to-GBNF converter
(`llama_grammar.SchemaConverter._rules`, worker/backends/grammars.py). Each of these libraries is
pinned to one version in pyproject.toml, and these
tests name what kanbanmesh reaches into: a new version that moves any of it fails here, by
name, rather than somewhere deep in the server or a worker. Move a pin only with this file.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned(distribution: str) -> str:
    """The version pyproject.toml pins `distribution` to (`name==X.Y.Z`), extras included."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        if re.sub(r"[-_.]+", "-", name.strip()).lower() == distribution:
            assert version and not re.search(r"[,<>=!~*]", version), f"{requirement}: not one version"
            return version.strip()
    raise AssertionError(f"{distribution} is not pinned with == in pyproject.toml")


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("distribution", ["uvicorn", "pycrdt", "llama-cpp-python"])
def test_the_installed_version_is_the_pinned_one(distribution: str) -> None:
    version = pinned(distribution)
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed (an optional extra)")
    assert installed == version, f"{distribution} {installed} installed, pyproject.toml pins {version}"


def test_uvicorn_websockets_sansio_has_what_the_direct_path_uses() -> None:
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.server import ServerState
    from websockets.server import ServerProtocol

    from kanbanmesh.server.direct_ws import DirectWebSocketProtocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    # The hooks DirectWebSocketProtocol overrides, called by uvicorn as they are declared.
    assert parameters(WebSocketsSansIOProtocol.__init__) == ["self", "config", "server_state", "app_state", "_loop"]
    assert parameters(WebSocketsSansIOProtocol.handle_connect) == ["self", "event"]
    assert parameters(WebSocketsSansIOProtocol.send_receive_event_to_app) == ["self"]
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app=app, ws=DirectWebSocketProtocol, log_config=None)
        config.load()
        protocol = DirectWebSocketProtocol(config, ServerState(), {}, _loop=loop)
        # The state DirectWebSocketProtocol and DirectChannel read and write.
        assert protocol.frames == [] and protocol.close_sent is False and protocol.disconnected is False
        assert protocol.read_paused is False and protocol.close_timer is None and protocol.loop is loop
        assert isinstance(protocol.queue, asyncio.Queue) and isinstance(protocol.writable, asyncio.Event)
        assert isinstance(protocol.close_timeout, float) and hasattr(protocol, "transport")
        assert isinstance(protocol.conn, ServerProtocol)
        for method in ("send_binary", "send_close", "data_to_send"):
            assert callable(getattr(protocol.conn, method)), method
    finally:
        loop.close()


def test_pycrdt_has_what_the_board_reads_and_writes_use() -> None:
    from pycrdt import Doc, Map, Text
    from pycrdt._base import process_event
    from pycrdt._pycrdt import Map as YrsMap
    from pycrdt._pycrdt import MapEvent as YrsMapEvent
    from pycrdt._pycrdt import Text as YrsText

    assert callable(process_event) and isinstance(YrsMapEvent, type)
    doc: Doc[Any] = Doc()
    column = doc.get("todo", type=Map)
    column["t"] = Map({"output": Text("x")})
    entry = column["t"]
    assert isinstance(entry.integrated, YrsMap) and isinstance(entry["output"].integrated, YrsText)
    for name in ("has", "get", "insert", "keys", "to_json", "observe", "observe_deep"):
        assert callable(getattr(entry.integrated, name)), name
    assert callable(entry._maybe_as_type_or_doc) and isinstance(entry._subscriptions, list)
    assert isinstance(doc._exceptions, list) and callable(doc._read_transaction)
    with doc.transaction() as txn:
        assert txn._txn is not None
        assert isinstance(doc._doc.roots(txn._txn), dict | list)


def test_llama_cpp_model_has_what_the_llama_backend_uses() -> None:
    internals = pytest.importorskip("llama_cpp._internals")
    model = internals.LlamaModel
    assert parameters(model.__init__)[:4] == ["self", "path_model", "params", "verbose"]
    for name in ("metadata", "token_eos", "token_bos", "token_get_text", "tokenize", "close"):
        assert callable(getattr(model, name)), name
    assert parameters(model.tokenize) == ["self", "text", "add_bos", "special"]


def test_llama_cpp_context_and_batch_have_what_the_embedding_backend_uses() -> None:
    # worker/backends/llama_embed.py decodes several sequences per batch through the `Llama`
    # object's own context and batch (`_ctx`, `_batch`) and reads each pooled vector.
    llama_cpp = pytest.importorskip("llama_cpp")
    internals = pytest.importorskip("llama_cpp._internals")
    assert parameters(internals.LlamaBatch.add_sequence) == ["self", "batch", "seq_id", "logits_all"]
    assert callable(internals.LlamaBatch.reset)
    assert parameters(internals.LlamaContext.decode) == ["self", "batch"]
    assert callable(internals.LlamaContext.kv_cache_clear)
    assert callable(llama_cpp.llama_get_embeddings_seq)
    init = inspect.getsource(llama_cpp.Llama.__init__)
    assert "self._ctx = " in init and "self._batch = " in init


def test_llama_cpp_schema_converter_has_what_the_grammars_use() -> None:
    grammar = pytest.importorskip("llama_cpp.llama_grammar")
    converter = grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    assert parameters(converter.resolve_refs) == ["schema", "url"]
    assert parameters(converter.visit) == ["schema", "name"]
    name = converter.visit(converter.resolve_refs({"type": "object", "properties": {"a": {"type": "string"}}}, "x"), "x")
    assert isinstance(converter._rules, dict) and name in converter._rules and "char" in converter._rules
    converter._rules["root"] = name
    assert f"root ::= {name}" in converter.format_grammar()
    # grammars.py's `_Converter` names an integer-range rule as `visit` names its own, adds it
    # with `_add_rule`, and uses the `space` rule every value ends with; `visit` recurses
    # through `self.visit` (an override sees every nested schema), and the converter's own
    # `integer` ignores bounds (else the override would be for nothing).
    assert {"integer", "string", "number", "char"} <= grammar.RESERVED_NAMES
    assert parameters(converter._add_rule) == ["name", "rule"] and converter._rules["space"] == '" "?'
    assert "self.visit(" in inspect.getsource(grammar.SchemaConverter._build_object_rule)
    bounded = grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    assert bounded.visit({"type": "integer", "minimum": 0, "maximum": 9}, "n") == "integer"
