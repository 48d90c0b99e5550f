"""`kanbanmesh submit`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import anyio

from client_sdk import AsyncClient
from kanbanmesh.board.schema import RagSpec, TaskStatus
from kanbanmesh.settings import Settings


@dataclass(frozen=True)
class SubmitOptions:
    prompt: str
    model: str = ""
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    priority: int = 0
    rag_collection: str | None = None
    rag_k: int | None = None
    task_id: str | None = None
    after: tuple[str, ...] = ()
    no_stream: bool = False
    as_json: bool = False
    timeout: float | None = None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop) or None,
            "seed": self.seed,
        }
        return {k: v for k, v in params.items() if v is not None}

    def rag(self) -> RagSpec | None:
        if self.rag_collection is None:
            return None
        k = {"k": self.rag_k} if self.rag_k is not None else {}
        return RagSpec.model_validate({"collection": self.rag_collection, **k})


async def submit_async(settings: Settings, options: SubmitOptions) -> int:
    async with AsyncClient(settings.url, settings.board, token=settings.token,
                           owner=settings.owner) as client:
        if options.system is not None:
            task = await client.submit(
                messages=[{"role": "system", "content": options.system},
                          {"role": "user", "content": options.prompt}],
                model=options.model, params=options.params(), priority=options.priority,
                rag=options.rag(), task_id=options.task_id, after=list(options.after) or None,
            )
        else:
            task = await client.submit(options.prompt, model=options.model,
                                       params=options.params(), priority=options.priority,
                                       rag=options.rag(), task_id=options.task_id,
                                       after=list(options.after) or None)
        with anyio.fail_after(options.timeout):
            if not options.no_stream and not options.as_json:
                async for chunk in task.stream():
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
            entry = await task.wait()
    if options.as_json:
        print(json.dumps(entry.model_dump(mode="json"), indent=2))
    elif options.no_stream:
        print(entry.result or "")
    else:
        print()
    if entry.citations and not options.as_json:
        for cite in entry.citations:
            where = f"{cite.source} > {cite.heading}" if cite.heading else cite.source
            print(f"[{cite.n}] {where} ({cite.score:.3f})")
    if entry.status is TaskStatus.SUCCEEDED:
        return 0
    detail = f": {entry.error.code}: {entry.error.message}" if entry.error else ""
    print(f"task {entry.id} {entry.status.value if entry.status else 'ended'}{detail}", file=sys.stderr)
    return 1


def run_submit(settings: Settings, options: SubmitOptions) -> int:
    try:
        return anyio.run(submit_async, settings, options)
    except TimeoutError:
        print(f"error: no result within {options.timeout} s", file=sys.stderr)
        return 3
