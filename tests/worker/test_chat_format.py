"""Which chat format a model is talked to in."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanbanmesh.board.schema import ChatMessage, TaskParams
from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationRequest
from worker.backends.chat_format import resolve_chat_format
from worker.backends.llama_loader import read_vocabulary


def request(prompt: str | None = None, messages: list[ChatMessage] | None = None) -> GenerationRequest:
    return GenerationRequest(messages=messages, prompt=prompt, params=TaskParams())


def test_the_gguf_template_is_used_by_default(bundled_gguf: Path) -> None:
    metadata, specials = read_vocabulary(bundled_gguf)
    chat = resolve_chat_format(metadata, specials)
    assert chat.name == "chat_template.default"
    prompt = chat.render(request("Hi"))
    assert prompt.text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert specials.eos_id in prompt.stop_token_ids and not prompt.add_bos


def test_a_model_without_template_is_refused_unless_a_format_is_named(template_free_gguf: Path) -> None:
    metadata, specials = read_vocabulary(template_free_gguf)
    assert "tokenizer.chat_template" not in metadata
    with pytest.raises(BackendError, match="gemma.*has no chat template.*--chat-format") as caught:
        resolve_chat_format(metadata, specials, model=template_free_gguf.name)
    assert caught.value.code == "no_chat_format"
    gemma = resolve_chat_format(metadata, specials, "gemma")
    text = gemma.render(request(messages=[ChatMessage(role="user", content="Hi")])).text
    assert "<start_of_turn>user\nHi<end_of_turn>" in text


def test_raw_completion_takes_bare_prompts_only(template_free_gguf: Path) -> None:
    metadata, specials = read_vocabulary(template_free_gguf)
    raw = resolve_chat_format(metadata, specials, "none")
    assert raw.render(request("Once upon a time")).text == "Once upon a time"
    with pytest.raises(BackendError, match="send a bare `prompt`"):
        raw.render(request(messages=[ChatMessage(role="user", content="Hi")]))


def test_an_unknown_format_name_lists_the_known_ones(bundled_gguf: Path) -> None:
    metadata, specials = read_vocabulary(bundled_gguf)
    with pytest.raises(BackendError, match="unknown chat format 'bogus'.*chatml"):
        resolve_chat_format(metadata, specials, "bogus")
    with pytest.raises(BackendError, match="not a plain prompt format"):
        resolve_chat_format(metadata, specials, "functionary-v2")
