"""Summarize a long document map-reduce style, as a task graph on a kanbanmesh board.

One task per part of the document ("map"), then one task that waits for all of them
(`after=[...]`) and combines their summaries ("reduce"), referring to each as
`{{result:ID}}`. Run it against `kanbanmesh up` and watch the board page: the parts run on
the workers as slots free up, while the combining card waits in `todo` ("waits for: ...").

    python examples/mapreduce/mapreduce.py --url ws://127.0.0.1:8765 [FILE]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from itertools import accumulate, pairwise
from pathlib import Path

import anyio

from client_sdk import AsyncClient, TaskEntry, TaskHandle, TaskStatus, result_ref

HERE = Path(__file__).resolve().parent
DEFAULT_TEXT = HERE / "second_inaugural.txt"


def split(text: str, parts: int) -> list[str]:
    """`text` cut between paragraphs into `parts` pieces of about equal length (fewer when it
    has fewer paragraphs): each cut goes to the paragraph end nearest its share of the text."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    parts = max(1, min(parts, len(paragraphs)))
    ends = list(accumulate(len(p) for p in paragraphs))  # text up to each paragraph's end
    cuts: list[int] = []
    for k in range(1, parts):
        share = ends[-1] * k / parts
        low = (cuts[-1] if cuts else 0) + 1  # at least one paragraph per piece, before and after
        high = len(paragraphs) - (parts - k)
        cuts.append(min(range(low, high + 1), key=lambda i: abs(ends[i - 1] - share)))
    bounds = [0, *cuts, len(paragraphs)]
    return ["\n\n".join(paragraphs[a:b]) for a, b in pairwise(bounds)]


def map_prompt(part: str) -> str:
    return f"Summarize this passage in two sentences.\n\n{part}"


def reduce_prompt(part_ids: Sequence[str]) -> str:
    summaries = "\n".join(f"- {result_ref(task_id)}" for task_id in part_ids)
    return f"These are summaries of consecutive parts of one speech:\n{summaries}\n\nWrite a short summary of the whole speech."


async def summarize(client: AsyncClient, text: str, *, parts: int, max_tokens: int,
                    run: str | None = None, timeout_s: float = 600.0) -> TaskEntry:
    """Submit the graph, print progress as tasks finish, and return the combining task's entry."""
    run = run or uuid.uuid4().hex[:8]
    pieces = split(text, parts)
    params = {"max_tokens": max_tokens, "temperature": 0.0}
    handles: list[TaskHandle] = []
    for n, piece in enumerate(pieces, start=1):
        handles.append(await client.submit(map_prompt(piece), task_id=f"{run}-part{n}", params=params))
        print(f"submitted {handles[-1].id} ({len(piece)} characters)", flush=True)
    combine = await client.submit(
        reduce_prompt([h.id for h in handles]), task_id=f"{run}-combine", after=handles,
        params={**params, "max_tokens": max_tokens * 2},
    )
    print(f"submitted {combine.id}, waiting for {len(handles)} parts", flush=True)

    async def report(handle: TaskHandle) -> None:
        entry = await handle.wait()
        print(f"{handle.id}: {entry.status.value if entry.status else '?'}: {(entry.result or '').strip()[:200]}",
              flush=True)

    with anyio.fail_after(timeout_s):
        async with anyio.create_task_group() as tg:
            for handle in handles:
                tg.start_soon(report, handle)
        return await combine.wait()


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_TEXT, help="the text to summarize")
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the kanbanmesh server")
    parser.add_argument("--board", default="default")
    parser.add_argument("--token", default=None, help="an access token, when the server has auth on")
    parser.add_argument("--parts", type=int, default=4, help="how many parts to summarize separately")
    parser.add_argument("--max-tokens", type=int, default=96, help="the longest summary of a part")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the whole graph")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    async with AsyncClient(args.url, board=args.board, token=args.token) as client:
        entry = await summarize(client, text, parts=args.parts, max_tokens=args.max_tokens,
                                timeout_s=args.timeout)
    if entry.status is not TaskStatus.SUCCEEDED:
        error = entry.error.message if entry.error else ""
        print(f"{entry.id}: {entry.status.value if entry.status else '?'}: {error}", file=sys.stderr)
        return 1
    print(f"\nsummary of {args.file.name}:\n{(entry.result or '').strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
