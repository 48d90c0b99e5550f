"""The worker's prompt: history, then the task's turns with the retrieval template, trimmed
to what fits (oldest history first, then the lowest-ranked sources)."""

from __future__ import annotations

from kanbanmesh.board.schema import ChatMessage, TaskEntry, TaskParams
from worker.prompt import INSTRUCTION, build_prompt


def task(**fields: object) -> TaskEntry:
    return TaskEntry.model_validate({"id": "t", "prompt": "What is X?", **fields})


CONTEXT = [{"text": f"chunk {n} " + "x" * 50, "source": f"doc{n}.md", "heading": "H" if n == 1 else "",
            "position": n, "score": 1.0 - n / 10} for n in range(1, 4)]
HISTORY = [{"role": "user", "content": "old question " + "y" * 50},
           {"role": "assistant", "content": "old answer " + "z" * 50}]


def size_limit(limit: int):  # type: ignore[no-untyped-def]
    def fits(messages: list[ChatMessage], params: TaskParams) -> bool:
        return sum(len(m.content) for m in messages) <= limit

    return fits


def test_the_template_numbers_the_sources_before_the_question() -> None:
    prompt = build_prompt(task(context=CONTEXT), None)
    [turn] = prompt.messages
    assert turn.role == "user"
    assert turn.content.startswith(INSTRUCTION + "\n\n[1] doc1.md > H\nchunk 1 ")
    assert "\n\n[3] doc3.md\nchunk 3 " in turn.content and turn.content.endswith("\n\nQuestion: What is X?")
    assert [(c.n, c.source, c.position) for c in prompt.citations] == [(1, "doc1.md", 1), (2, "doc2.md", 2),
                                                                       (3, "doc3.md", 3)]


def test_history_goes_first_and_is_trimmed_before_the_sources() -> None:
    entry = task(context=CONTEXT, history=HISTORY,
                 messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}],
                 prompt=None)
    everything = build_prompt(entry, None).messages
    assert [m.role for m in everything] == ["user", "assistant", "system", "user"]
    full = sum(len(m.content) for m in everything)
    no_history = build_prompt(entry, size_limit(full - 100))
    assert [m.role for m in no_history.messages] == ["system", "user"] and len(no_history.citations) == 3
    history_chars = sum(len(m["content"]) for m in HISTORY)
    fewer_sources = build_prompt(entry, size_limit(full - history_chars - 10))  # one source too many
    assert [c.n for c in fewer_sources.citations] == [1, 2] and "doc3.md" not in fewer_sources.messages[-1].content
    nothing_fits = build_prompt(entry, size_limit(10))
    assert nothing_fits.citations == [] and nothing_fits.messages[-1].content == "Q?"
