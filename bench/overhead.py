"""Mesh overhead: the same request to llama-cpp-python directly and through `kanbanmesh up`.

Run from the repository root::

    .venv/bin/python -m bench.overhead --threads 1
    .venv/bin/python -m bench.overhead --threads 2

One run, same model (the bundled SmolLM2-135M-Instruct), same prompt, params and llama.cpp
thread count on every side, alternating request by request:

* direct: `Llama.create_chat_completion(stream=True)` in this process, from a clean KV cache
  (the backend never reuses a cached prefix, so the baseline does not either);
* backend: the kanbanmesh llama backend in this process, no mesh (thread hand-off, own
  sampling loop), to tell its cost apart from the mesh's;
* mesh: `kanbanmesh up --backend llama` in a child process (server, embedded broker, one
  worker process), the request submitted and streamed by the Python SDK from this process.

Client-seen TTFT is from the request (submit) to the first text; tokens/s is (completion
tokens - 1) / (last text - first text). Two prompts: a short one and one of ~500 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from llama_cpp import Llama

from bench.dispatch import _free_port, _kanbanmesh, wait_healthy
from client_sdk import AsyncClient
from kanbanmesh.board.schema import ChatMessage, TaskParams
from worker.backends.base import GenerationRequest, TextChunk
from worker.backends.llama import LlamaBackend, LlamaConfig
from worker.backends.llama_generate import Decoding
from worker.backends.llama_loader import LoadOptions, extra_buffers_safe, load_llama
from worker.backends.models import resolve_model

SHORT = "Write a short story about a lighthouse keeper."
PARAGRAPH = (
    "The harbour town woke before dawn. Fishing boats slipped their moorings one by one, "
    "their engines coughing in the cold air, while gulls circled the market hall where the "
    "first crates of the day were being stacked. Along the quay, nets lay drying over iron "
    "railings, and the smell of salt, diesel and fresh bread drifted up the narrow streets. "
)
LONG = PARAGRAPH * 7 + "\nSummarize the text above in two sentences."


@dataclass
class Sample:
    ttft_ms: float
    tokens_per_s: float


@dataclass
class Series:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    noisy: int = 0  # alternations started while other processes were busy
    # Mesh time in the client-seen TTFT, per mesh request: (submit -> worker started,
    # worker's first chunk -> client sees it), both from the same request, so prompt
    # evaluation's run-to-run noise is not in them.
    split: list[tuple[float, float]] = field(default_factory=list)

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)

    def median(self, key: str, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples[key])


def cpu_idle(window_s: float = 0.3) -> float:
    """Fraction of all cores idle over a short window (Linux /proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(window_s)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_until_quiet(min_idle: float = 0.9, timeout_s: float = 20.0) -> bool:
    """Wait until nothing else runs on the machine (a 2-core box shared with other work);
    False if it never got quiet (the sample is then taken anyway, and counted as noisy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cpu_idle() >= min_idle:
            return True
    return False


def rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def run_direct(llama: Llama, prompt: str, params: dict[str, Any]) -> tuple[str, float, float, float]:
    llama.reset()  # type: ignore[no-untyped-call]
    start = time.perf_counter()
    first = last = 0.0
    text = ""
    stream: Any = llama.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], stream=True, **params
    )
    for chunk in stream:
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            last = time.perf_counter()
            first = first or last
            text += piece
    return text, start, first, last


async def run_backend(backend: LlamaBackend, prompt: str, params: dict[str, Any]) -> tuple[str, float, float, float, int]:
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content=prompt)], prompt=None, params=TaskParams(**params)
    )
    start = time.perf_counter()
    first = last = 0.0
    text = ""
    tokens = 0
    async for event in backend.generate(request):
        if isinstance(event, TextChunk):
            last = time.perf_counter()
            first = first or last
            text += event.text
        else:
            tokens = event.usage.completion_tokens
    return text, start, first, last, tokens


@dataclass
class MeshRun:
    text: str
    start: float
    first: float
    last: float
    tokens: int
    queued_ms: float  # submit -> the worker started it (the broker's and the worker's share)
    worker_ttft_ms: float  # started -> first chunk, as the worker measured it


async def run_mesh(client: AsyncClient, prompt: str, params: dict[str, Any]) -> MeshRun:
    start = time.perf_counter()
    task = await client.submit(prompt, params=params)
    first = last = 0.0
    text = ""
    async for piece in task.stream():
        last = time.perf_counter()
        first = first or last
        text += piece
    entry = await task.result()
    assert entry.usage is not None and entry.timings is not None
    return MeshRun(text, start, first, last, entry.usage.completion_tokens,
                   entry.timings.queued_ms, entry.timings.ttft_ms)


@contextmanager
def mesh_up(threads: int, n_ctx: int) -> Iterator[str]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        process = subprocess.Popen(
            _kanbanmesh("up", "--port", str(port), "--data-dir", data, "--no-persist",
                        "--backend", "llama", "--threads", str(threads), "--n-ctx", str(n_ctx)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(port, 60, process)
            yield f"ws://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(30)


async def measure(args: argparse.Namespace) -> Series:
    params: dict[str, Any] = {
        "max_tokens": args.max_tokens, "temperature": 0.0, "seed": 1,
        "repeat_penalty": Decoding().repeat_penalty,
    }
    options = LoadOptions(n_ctx=args.n_ctx, threads=args.threads, extra_buffers=extra_buffers_safe())
    direct = load_llama(resolve_model("").path, options)
    backend = LlamaBackend(LlamaConfig(n_ctx=args.n_ctx, threads=args.threads))
    await backend.start()
    prompts = {"short": SHORT, "long": LONG}
    print(f"prompt tokens: short {len(direct.tokenize(SHORT.encode()))}, long {len(direct.tokenize(LONG.encode()))}")
    series = Series()
    with mesh_up(args.threads, args.n_ctx) as url:
        async with AsyncClient(url) as client:
            await client.wait_for_workers(1, timeout_s=60)
            for rep in range(args.reps + 1):  # rep 0 warms every path up and is not counted
                for name, prompt in prompts.items():
                    quiet = await anyio.to_thread.run_sync(wait_until_quiet)
                    text, start, first, last = await anyio.to_thread.run_sync(run_direct, direct, prompt, params)
                    b_text, b_start, b_first, b_last, tokens = await run_backend(backend, prompt, params)
                    mesh = await run_mesh(client, prompt, params)
                    series.noisy += not quiet
                    if not text == b_text == mesh.text or tokens != mesh.tokens:
                        raise RuntimeError(f"the three answers differ for the {name} prompt")
                    if rep == 0:
                        continue
                    mesh_ttft = (mesh.first - mesh.start) * 1000
                    series.add(f"{name}/direct", Sample((first - start) * 1000, rate(tokens, first, last)))
                    series.add(f"{name}/backend", Sample((b_first - b_start) * 1000, rate(tokens, b_first, b_last)))
                    series.add(f"{name}/mesh", Sample(mesh_ttft, rate(tokens, mesh.first, mesh.last)))
                    series.split.append((mesh.queued_ms, mesh_ttft - mesh.queued_ms - mesh.worker_ttft_ms))
                    print(f"rep {rep} {name}: {tokens} tokens; ttft ms direct {(first - start) * 1000:.1f} "
                          f"backend {(b_first - b_start) * 1000:.1f} mesh {mesh_ttft:.1f} (of which "
                          f"dispatch {mesh.queued_ms:.1f}, worker {mesh.worker_ttft_ms:.1f})", flush=True)
    await backend.stop()
    direct.close()
    return series


def report(series: Series, args: argparse.Namespace) -> None:
    print(f"\nthreads {args.threads}, n_ctx {args.n_ctx}, max_tokens {args.max_tokens}, {args.reps} reps, "
          f"medians ({series.noisy} alternation(s) started on a busy machine)")
    print("| prompt | path | TTFT ms | tokens/s | TTFT - direct ms | tokens/s ÷ direct |")
    print("|---|---|---:|---:|---:|---:|")
    for name in ("short", "long"):
        base_ttft = series.median(f"{name}/direct", "ttft_ms")
        base_rate = series.median(f"{name}/direct", "tokens_per_s")
        for path in ("direct", "backend", "mesh"):
            ttft = series.median(f"{name}/{path}", "ttft_ms")
            tps = series.median(f"{name}/{path}", "tokens_per_s")
            print(f"| {name} | {path} | {ttft:.1f} | {tps:.1f} | {ttft - base_ttft:+.1f} | {tps / base_rate:.3f} |")
    dispatch = statistics.median(d for d, _ in series.split)
    delivery = statistics.median(d for _, d in series.split)
    total = statistics.median(d + e for d, e in series.split)
    print(f"\nmesh share of the client-seen TTFT, median of {len(series.split)} requests: {total:.1f} ms "
          f"(submit -> worker started {dispatch:.1f} ms; worker's first chunk -> client {delivery:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, every path")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()
    report(anyio.run(measure, args), args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
