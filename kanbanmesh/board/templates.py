"""The result template of task graphs: `{{result:ID}}` in a task's text stands for the result
of task ID, one of the tasks it names in `after` (kanbanmesh/board/graph.py). Pure code."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from kanbanmesh.board import constants as c

MAX_PARENTS = 64  # ids one task may name in `after`

REF_START = "{{result:"
# `{{result:ID}}`, ID as a task id is spelled (kanbanmesh.board.schema.TASK_ID_PATTERN).
RESULT_REF = re.compile(r"\{\{result:([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})\}\}")


def result_ref(task_id: str) -> str:
    """The text that stands for task `task_id`'s result in a message: `{{result:ID}}`."""
    return "{{result:" + task_id + "}}"


def result_refs(texts: Iterable[str]) -> set[str]:
    """The task ids `texts` refer to as `{{result:ID}}`."""
    return {match.group(1) for text in texts for match in RESULT_REF.finditer(text)}


def substitute(text: str, results: Mapping[str, str]) -> str:
    """`text` with each `{{result:ID}}` whose ID `results` holds replaced by that result, in
    one pass: a result that itself holds a reference is not expanded again."""
    return RESULT_REF.sub(lambda m: results.get(m.group(1), m.group(0)), text)


def resolved_length(texts: Iterable[str], results: Mapping[str, str]) -> int:
    """The characters `texts` would hold with their references replaced by `results`,
    counted without replacing them: a text of a megabyte may hold ~80,000 references, each
    to a result of a megabyte."""
    return sum(
        len(text) + sum(len(results.get(m.group(1), m.group(0))) - len(m.group(0)) for m in RESULT_REF.finditer(text))
        for text in texts
    )


def request_texts(messages: Iterable[Mapping[str, Any]] | None, prompt: object) -> list[str]:
    """The texts of a request that may hold references: each message's content, the prompt."""
    texts = [str(m.get("content") or "") for m in messages or () if isinstance(m, Mapping)]
    if isinstance(prompt, str):
        texts.append(prompt)
    return texts


def resolved_fields(fields: Mapping[str, Any], results: Mapping[str, str]) -> dict[str, Any]:
    """The `messages` and `prompt` of plain entry fields with their references replaced by
    `results` (those of the two the entry holds)."""
    out: dict[str, Any] = {}
    messages = fields.get(c.F_MESSAGES)
    if isinstance(messages, list):
        out[c.F_MESSAGES] = [
            {**m, "content": substitute(str(m.get("content") or ""), results)} if isinstance(m, Mapping) else m
            for m in messages
        ]
    prompt = fields.get(c.F_PROMPT)
    if isinstance(prompt, str):
        out[c.F_PROMPT] = substitute(prompt, results)
    return out
