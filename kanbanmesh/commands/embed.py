"""`kanbanmesh embed`: texts in, vectors out, through one embed task."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import anyio

from client_sdk import AsyncClient, EmbedResult
from kanbanmesh.settings import Settings


@dataclass(frozen=True)
class EmbedOptions:
    texts: tuple[str, ...]
    model: str = ""
    dimensions: int | None = None
    as_json: bool = False
    timeout: float = 60.0


async def embed_async(settings: Settings, options: EmbedOptions) -> EmbedResult:
    async with AsyncClient(settings.url, settings.board, token=settings.token,
                           owner=settings.owner) as client:
        return await client.embed(list(options.texts), model=options.model,
                                  dimensions=options.dimensions, timeout_s=options.timeout)


def run_embed(settings: Settings, options: EmbedOptions) -> int:
    """Print the vectors (JSON Lines, or one JSON object with `--json`); the exit status."""
    try:
        found = anyio.run(embed_async, settings, options)
    except TimeoutError:
        print(f"error: no embedding worker answered within {options.timeout} s", file=sys.stderr)
        return 3
    if options.as_json:
        print(json.dumps({
            "model": found.model, "dimensions": found.dimensions,
            "usage": found.usage.model_dump(include={"prompt_tokens", "total_tokens"}),
            "embeddings": found.vectors.tolist(),
        }))
    else:
        for vector in found.vectors.tolist():
            print(json.dumps(vector))
    return 0
