"""External baselines for kanbanmesh: Celery + Redis, and a hand-made Redis queue.

Both baselines run the same "echo" task (``"echo: " + prompt``, no sleep) and
are measured the same way:

* **Latency** - one task at a time: ``t0``; submit; wait until the client sees
  the result; record.  Repeated ``n_latency`` times (after a short, unmeasured
  warm-up); p50 and p99 are reported in milliseconds.
* **Throughput** - ``clients`` concurrent client threads, each with its own
  connections/result handling, are released together by a barrier and each
  submit their share of ``n_throughput`` tasks at once, then wait for all of
  their results.  ``tasks_per_s = n_throughput / (last result seen - first
  submit)``.

Everything the baselines start (a private ``redis-server`` on a free
ephemeral port, the Celery worker, the hand-made queue's worker processes) is
stopped in ``finally`` blocks, also on Ctrl-C, and every wait is bounded by a
timeout.

Install the prerequisites (not project dependencies) with::

    PYTHON=.venv/bin/python bash bench/setup.sh

and run both baselines from the repository root with::

    .venv/bin/python -m bench.baselines
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

#: Repository root (the directory that contains ``bench/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Environment variable read by :mod:`bench.celery_app` (duplicated here so
#: that importing this module never imports Celery).
REDIS_URL_ENV = "KANBANMESH_BENCH_REDIS_URL"

_STOP = b"__kanbanmesh_bench_stop__"


# --------------------------------------------------------------------------- #
# Results
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class BenchResult:
    """Outcome of one baseline run.

    Attributes:
        system: Human-readable description, e.g.
            ``"celery 5.7.0 + redis, 4 thread workers"``.
        p50_ms: Median latency (submit -> result seen by the client), one
            task at a time, over ``n_latency`` tasks, in milliseconds.
        p99_ms: 99th percentile of the same samples, in milliseconds.
        tasks_per_s: Throughput: ``n_throughput`` tasks submitted at once by
            ``clients`` concurrent client threads, divided by the time from
            the first submit to the last result seen.
        note: Free-form details (versions, parameters).
    """

    system: str
    p50_ms: float
    p99_ms: float
    tasks_per_s: float
    note: str = ""


def echo_transform(prompt: str) -> str:
    """The deterministic work done by every baseline: prefix the prompt.

    Identical to :func:`bench.celery_app.echo_transform` (kept separate so
    this module does not need Celery).
    """
    return "echo: " + prompt


def percentile(samples: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``samples``.

    Linear interpolation between closest ranks (the same definition as
    NumPy's default and ``statistics.quantiles(method="inclusive")``).
    """
    if not samples:
        raise ValueError("percentile() of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


# --------------------------------------------------------------------------- #
# Availability checks
# --------------------------------------------------------------------------- #


def redis_available() -> bool:
    """True if ``redis-server`` is on PATH and the ``redis`` client imports."""
    if shutil.which("redis-server") is None:
        return False
    try:
        import redis  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def celery_available() -> bool:
    """True if Celery imports and :func:`redis_available` is true."""
    try:
        import celery  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return redis_available()


# --------------------------------------------------------------------------- #
# Process helpers
# --------------------------------------------------------------------------- #


def _free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free ephemeral TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Send a raw ``PING`` to a Redis server; True if it answers ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _parent_death_preexec() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` asking Linux to SIGTERM the child if we die.

    Best effort (Linux only): it covers the case where this process is
    killed with SIGKILL and cannot run its ``finally`` blocks.  ``None`` on
    other platforms, and while other threads run (``preexec_fn`` is only
    safe in a single-threaded process).
    """
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except Exception:  # noqa: BLE001 - best effort
        return None
    pr_set_pdeathsig = 1

    def _preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return _preexec


def _stop_process(
    proc: subprocess.Popen[Any], timeout: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Stop ``proc``: send ``sig``, wait up to ``timeout`` s, then SIGKILL.

    The SIGKILL fallback runs in a ``finally`` block, so an interrupt that
    arrives while waiting still leaves no process behind.
    """
    if proc.poll() is not None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)


def _tail(path: Path, limit: int = 4000) -> str:
    """Return the last ``limit`` characters of a log file (or a placeholder)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:] if text else "<empty log>"


# --------------------------------------------------------------------------- #
# Private redis-server
# --------------------------------------------------------------------------- #


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1, as a context manager.

    Runs ``redis-server --port <free port> --save '' --appendonly no`` in a
    temporary directory, waits (bounded) until it answers ``PING``, and stops
    it (SIGTERM, then SIGKILL) and removes the directory on exit::

        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        executable: str = "redis-server",
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        """Configure (not start) the server.

        Args:
            host: Address to bind (loopback by default).
            port: Fixed port; ``None`` picks a free ephemeral port.
            executable: ``redis-server`` binary name or path.
            startup_timeout: Max seconds to wait for ``PING`` per attempt.
            shutdown_timeout: Max seconds to wait after SIGTERM before SIGKILL.
        """
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the running server."""
        if self.port is None:
            raise RuntimeError("RedisServer is not running")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it answers ``PING``.

        Retries with another port if the chosen one was taken in the
        meantime.  Raises ``RuntimeError`` (with the server log) on failure.
        """
        if self.running:
            return self
        exe = shutil.which(self.executable)
        if exe is None:
            raise RuntimeError(f"{self.executable!r} not found on PATH; run bench/setup.sh")
        try:
            self._dir = tempfile.mkdtemp(prefix="kanbanmesh-bench-redis-")
            log_path = Path(self._dir) / "redis.log"
            last_error = ""
            attempts = 1 if self._requested_port is not None else 3
            for _ in range(attempts):
                port = (
                    self._requested_port
                    if self._requested_port is not None
                    else _free_port(self.host)
                )
                if self._log is not None:
                    self._log.close()
                self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
                self._proc = subprocess.Popen(
                    [
                        exe,
                        "--port",
                        str(port),
                        "--bind",
                        self.host,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--dir",
                        self._dir,
                    ],
                    cwd=self._dir,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_parent_death_preexec(),  # noqa: PLW1509 - guarded
                )
                deadline = time.monotonic() + self.startup_timeout
                while time.monotonic() < deadline and self._proc.poll() is None:
                    if _redis_ping(self.host, port):
                        self.port = port
                        return self
                    time.sleep(0.02)
                _stop_process(self._proc, self.shutdown_timeout)
                last_error = _tail(log_path)
            raise RuntimeError(
                f"redis-server did not answer PING within {self.startup_timeout}s:\n{last_error}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        try:
            if self._proc is not None:
                _stop_process(self._proc, self.shutdown_timeout)
        finally:
            self._proc = None
            self.port = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Self:
        """Start the server (see :meth:`start`)."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (see :meth:`stop`)."""
        self.stop()


# --------------------------------------------------------------------------- #
# Shared measurement procedure
# --------------------------------------------------------------------------- #


def _check_args(n_latency: int, n_throughput: int, clients: int) -> None:
    if n_latency < 1:
        raise ValueError("n_latency must be >= 1")
    if clients < 1:
        raise ValueError("clients must be >= 1")
    if n_throughput < clients:
        raise ValueError("n_throughput must be >= clients")


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal non-negative integers."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


#: A throughput client: ``(index, n_tasks, barrier, deadline) -> (t_first_submit, t_last_result)``.
#: It must do its own (unmeasured) connection set-up / warm-up *before*
#: ``barrier.wait()``, and use ``time.perf_counter()`` for both timestamps.
ClientFn = Callable[[int, int, threading.Barrier, float], tuple[float, float]]


def _run_throughput(client_fn: ClientFn, n_throughput: int, clients: int, timeout: float) -> float:
    """Run ``clients`` threads of ``client_fn`` together; return tasks/s.

    ``tasks/s = n_throughput / (max(last result) - min(first submit))``.
    Every wait is bounded by ``timeout`` (seconds, for the whole phase).
    """
    deadline = time.monotonic() + timeout
    barrier = threading.Barrier(clients)
    spans: list[tuple[float, float] | None] = [None] * clients
    errors: list[BaseException] = []
    lock = threading.Lock()

    def _thread(idx: int, count: int) -> None:
        try:
            spans[idx] = client_fn(idx, count, barrier, deadline)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller below
            barrier.abort()
            with lock:
                errors.append(exc)

    threads = [
        threading.Thread(target=_thread, args=(i, n), name=f"bench-client-{i}", daemon=True)
        for i, n in enumerate(_split(n_throughput, clients))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 5.0)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"throughput phase did not finish within {timeout:.0f}s")
    if errors:
        # Prefer the root cause over the BrokenBarrierError it caused elsewhere.
        first = next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
        raise RuntimeError(f"throughput client failed: {first!r}") from first
    done = [s for s in spans if s is not None]
    start = min(s[0] for s in done)
    end = max(s[1] for s in done)
    return n_throughput / (end - start)


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (``time.monotonic()`` based); raises if none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("benchmark deadline exceeded")
    return left


# --------------------------------------------------------------------------- #
# Celery + Redis
# --------------------------------------------------------------------------- #


def run_celery(
    n_latency: int = 300,
    n_throughput: int = 5000,
    clients: int = 10,
    *,
    concurrency: int = 4,
    warmup: int = 20,
    task_timeout: float = 30.0,
    throughput_timeout: float = 300.0,
    startup_timeout: float = 60.0,
) -> BenchResult:
    """Benchmark Celery 5 with Redis as broker and result backend.

    Starts a private :class:`RedisServer`, then a Celery worker subprocess::

        python -m celery -A bench.celery_app worker --pool threads \
            --concurrency 4 --without-gossip --without-mingle \
            --without-heartbeat -Q kanbanmesh_bench --loglevel WARNING

    configured through ``KANBANMESH_BENCH_REDIS_URL``.  Waits until the worker
    has answered a trivial echo task, runs ``warmup`` unmeasured tasks, then
    measures latency (``echo.delay(prompt).get()`` one at a time) and
    throughput (``clients`` threads, each submitting its share with
    ``delay()`` and then ``get()``-ing every result).  The worker gets a warm
    shutdown (SIGTERM, SIGKILL after 15 s) and Redis is stopped, also on
    errors and Ctrl-C.

    Args:
        n_latency: Number of sequential tasks for the latency percentiles.
        n_throughput: Total tasks of the throughput phase.
        clients: Concurrent client threads in the throughput phase.
        concurrency: Worker threads (``--concurrency``).
        warmup: Unmeasured tasks run before the latency phase.
        task_timeout: Max seconds to wait for one result in the latency phase.
        throughput_timeout: Max seconds for the whole throughput phase.
        startup_timeout: Max seconds for the worker to answer its first task.
    """
    _check_args(n_latency, n_throughput, clients)
    if not celery_available():
        raise RuntimeError(
            "celery/redis not available; run: PYTHON=.venv/bin/python bash bench/setup.sh"
        )
    import celery
    from celery.exceptions import TimeoutError as CeleryTimeoutError

    from bench import celery_app as capp

    with (
        RedisServer() as server,
        tempfile.TemporaryDirectory(prefix="kanbanmesh-bench-celery-") as tmp,
    ):
        log_path = Path(tmp) / "worker.log"
        env = dict(os.environ)
        env[capp.REDIS_URL_ENV] = server.url
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            capp.QUEUE,
            "--loglevel",
            "WARNING",
            "--hostname",
            f"kmbench-{uuid.uuid4().hex[:8]}@%h",
        ]
        client_app = capp.create_app(
            server.url, main="kanbanmesh_bench_client", set_as_current=False
        )
        echo: Any = client_app.tasks[capp.ECHO_TASK_NAME]
        worker: subprocess.Popen[bytes] | None = None
        with open(log_path, "wb") as log:
            try:
                worker = subprocess.Popen(
                    cmd,
                    cwd=str(REPO_ROOT),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_parent_death_preexec(),  # noqa: PLW1509 - guarded
                )

                # Wait until the worker answers a trivial task (bounded).
                probe = echo.delay("ready?")
                deadline = time.monotonic() + startup_timeout
                while True:
                    if worker.poll() is not None:
                        raise RuntimeError(
                            f"celery worker exited with {worker.returncode}:\n{_tail(log_path)}"
                        )
                    try:
                        if probe.get(timeout=0.5) != echo_transform("ready?"):
                            raise RuntimeError("celery echo returned a wrong result")
                        break
                    except CeleryTimeoutError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(
                                f"celery worker not ready after {startup_timeout}s:\n{_tail(log_path)}"
                            ) from None

                for i in range(warmup):
                    echo.delay(f"warm-up {i}").get(timeout=task_timeout)

                # Latency: one task at a time.
                samples: list[float] = []
                for i in range(n_latency):
                    prompt = f"latency prompt {i}"
                    t0 = time.perf_counter()
                    result = echo.delay(prompt)
                    out = result.get(timeout=task_timeout)
                    samples.append(time.perf_counter() - t0)
                    if out != echo_transform(prompt):
                        raise RuntimeError(f"wrong result {out!r} for {prompt!r}")

                # Throughput: `clients` threads, each submits its share at once.
                def client(
                    idx: int, count: int, barrier: threading.Barrier, deadline: float
                ) -> tuple[float, float]:
                    # Unmeasured: creates this thread's result backend/pub-sub connection.
                    echo.delay(f"client {idx} warm-up").get(timeout=_remaining(deadline))
                    barrier.wait(timeout=_remaining(deadline))
                    t_first = time.perf_counter()
                    prompts = [f"client {idx} task {j}" for j in range(count)]
                    pending = [echo.delay(p) for p in prompts]
                    for p, r in zip(prompts, pending):
                        out = r.get(timeout=_remaining(deadline))
                        if out != echo_transform(p):
                            raise RuntimeError(f"wrong result {out!r} for {p!r}")
                    t_last = time.perf_counter()
                    return t_first, t_last

                tasks_per_s = _run_throughput(client, n_throughput, clients, throughput_timeout)
            finally:
                try:
                    if worker is not None:
                        _stop_process(worker, timeout=15.0, sig=signal.SIGTERM)  # warm shutdown
                finally:
                    client_app.close()

    return BenchResult(
        system=f"celery {celery.__version__} + redis, {concurrency} thread workers",
        p50_ms=percentile(samples, 50) * 1000.0,
        p99_ms=percentile(samples, 99) * 1000.0,
        tasks_per_s=tasks_per_s,
        note=(
            f"broker+backend: redis-server on 127.0.0.1; latency n={n_latency} after {warmup} warm-up; "
            f"throughput n={n_throughput}, {clients} client threads"
        ),
    )


# --------------------------------------------------------------------------- #
# Hand-made Redis queue: LPUSH/BRPOP + pub/sub replies
# --------------------------------------------------------------------------- #


def _redis_queue_worker(url: str, queue_key: str, ready_key: str, parent_pid: int) -> None:
    """Worker process loop: ``BRPOP`` -> echo -> ``PUBLISH`` the result.

    Messages are JSON ``{"id", "prompt", "reply"}``; the result is published
    as JSON ``{"id", "result"}`` on the ``reply`` channel.  Exits on the stop
    sentinel, or when the parent process has gone away (checked every idle
    second, and when the Redis connection breaks).
    SIGINT is ignored: the parent drives the shutdown.
    """
    import redis

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = redis.Redis.from_url(url)
    try:
        client.rpush(ready_key, os.getpid())
        while True:
            item = client.brpop([queue_key], timeout=1)
            if item is None:
                if os.getppid() != parent_pid:
                    return
                continue
            raw = item[1]
            if raw == _STOP:
                return
            msg = json.loads(raw)
            client.publish(
                msg["reply"], json.dumps({"id": msg["id"], "result": echo_transform(msg["prompt"])})
            )
    except redis.ConnectionError:
        if os.getppid() == parent_pid:
            raise
        # The benchmark process died and took its redis-server with it: exit quietly.
    finally:
        client.close()


class _RedisQueueClient:
    """Client side of the hand-made queue: its own connection + reply channel."""

    def __init__(self, url: str, queue_key: str, deadline: float) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._queue_key = queue_key
        self.channel = f"{queue_key}:reply:{uuid.uuid4().hex}"
        self._pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(self.channel)
        # Wait for the subscription to be confirmed before anything is sent.
        while True:
            msg = self._pubsub.get_message(timeout=min(1.0, _remaining(deadline)))
            if msg is not None and msg["type"] == "subscribe":
                break
        self._seq = 0

    def submit(self, prompt: str) -> str:
        """``LPUSH`` one task; return its id."""
        self._seq += 1
        task_id = f"{self.channel}:{self._seq}"
        self._redis.lpush(
            self._queue_key, json.dumps({"id": task_id, "prompt": prompt, "reply": self.channel})
        )
        return task_id

    def next_result(self, deadline: float) -> tuple[str, str]:
        """Wait (bounded by ``deadline``) for the next reply; ``(id, result)``."""
        while True:
            msg = self._pubsub.get_message(timeout=min(1.0, _remaining(deadline)))
            if msg is not None and msg["type"] == "message":
                data = json.loads(msg["data"])
                return str(data["id"]), str(data["result"])

    def close(self) -> None:
        """Close the pub/sub and command connections."""
        with contextlib.suppress(Exception):
            self._pubsub.close()
        with contextlib.suppress(Exception):
            self._redis.close()


def run_redis_queue(
    n_latency: int = 300,
    n_throughput: int = 5000,
    clients: int = 10,
    workers: int = 4,
    *,
    warmup: int = 20,
    task_timeout: float = 30.0,
    throughput_timeout: float = 300.0,
    startup_timeout: float = 30.0,
) -> BenchResult:
    """Benchmark the hand-made "Redis list as a queue" pattern.

    A private :class:`RedisServer`; ``workers`` worker processes (spawned
    with :mod:`multiprocessing`), each looping ``BRPOP queue`` -> echo ->
    ``PUBLISH reply-channel``.  Every client has its own connection and its
    own reply channel (subscribed before it submits) and submits with one
    ``LPUSH`` per task.  Same latency/throughput procedure as
    :func:`run_celery`.  Workers are stopped with a sentinel, then
    terminated/killed if needed, and Redis is stopped, also on Ctrl-C.

    Args:
        n_latency: Number of sequential tasks for the latency percentiles.
        n_throughput: Total tasks of the throughput phase.
        clients: Concurrent client threads in the throughput phase.
        workers: Worker processes.
        warmup: Unmeasured tasks run before the latency phase.
        task_timeout: Max seconds to wait for one result in the latency phase.
        throughput_timeout: Max seconds for the whole throughput phase.
        startup_timeout: Max seconds for all workers to report ready.
    """
    _check_args(n_latency, n_throughput, clients)
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not redis_available():
        raise RuntimeError("redis not available; run: PYTHON=.venv/bin/python bash bench/setup.sh")
    import redis

    ctx = multiprocessing.get_context("spawn")
    prefix = f"kmbench:{uuid.uuid4().hex[:8]}"
    queue_key, ready_key = f"{prefix}:queue", f"{prefix}:ready"

    with RedisServer() as server:
        control = redis.Redis.from_url(server.url)
        procs: list[multiprocessing.process.BaseProcess] = []
        try:
            for _ in range(workers):
                proc = ctx.Process(
                    target=_redis_queue_worker,
                    args=(server.url, queue_key, ready_key, os.getpid()),
                    daemon=True,
                )
                proc.start()
                procs.append(proc)
            ready = 0
            deadline = time.monotonic() + startup_timeout
            while ready < workers:
                if any(p.exitcode is not None for p in procs):
                    raise RuntimeError("a redis-queue worker process exited during start-up")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"only {ready}/{workers} redis-queue workers ready after {startup_timeout}s"
                    )
                if control.blpop([ready_key], timeout=1) is not None:
                    ready += 1

            # Latency: one task at a time.
            lat_client = _RedisQueueClient(
                server.url, queue_key, time.monotonic() + startup_timeout
            )
            try:
                for i in range(warmup):
                    lat_client.submit(f"warm-up {i}")
                    lat_client.next_result(time.monotonic() + task_timeout)
                samples: list[float] = []
                for i in range(n_latency):
                    prompt = f"latency prompt {i}"
                    t0 = time.perf_counter()
                    task_id = lat_client.submit(prompt)
                    got_id, out = lat_client.next_result(time.monotonic() + task_timeout)
                    samples.append(time.perf_counter() - t0)
                    if got_id != task_id or out != echo_transform(prompt):
                        raise RuntimeError(
                            f"wrong result {out!r} (id {got_id}) for {prompt!r} (id {task_id})"
                        )
            finally:
                lat_client.close()

            # Throughput: `clients` threads, each submits its share at once.
            def client(
                idx: int, count: int, barrier: threading.Barrier, deadline: float
            ) -> tuple[float, float]:
                qc = _RedisQueueClient(server.url, queue_key, deadline)
                try:
                    qc.submit(f"client {idx} warm-up")  # unmeasured
                    qc.next_result(deadline)
                    barrier.wait(timeout=_remaining(deadline))
                    t_first = time.perf_counter()
                    expected = {
                        qc.submit(f"client {idx} task {j}"): echo_transform(
                            f"client {idx} task {j}"
                        )
                        for j in range(count)
                    }
                    while expected:
                        got_id, out = qc.next_result(deadline)
                        if expected.pop(got_id, None) != out:
                            raise RuntimeError(f"unexpected/wrong result {out!r} for id {got_id}")
                    t_last = time.perf_counter()
                    return t_first, t_last
                finally:
                    qc.close()

            tasks_per_s = _run_throughput(client, n_throughput, clients, throughput_timeout)
        finally:
            try:
                with contextlib.suppress(Exception):
                    alive = sum(1 for p in procs if p.is_alive())
                    if alive:
                        control.rpush(queue_key, *([_STOP] * alive))  # next to be popped
                stop_deadline = time.monotonic() + 5.0
                for p in procs:
                    p.join(timeout=max(0.0, stop_deadline - time.monotonic()))
            finally:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                        p.join(timeout=3.0)
                    if p.is_alive():
                        p.kill()
                        p.join(timeout=3.0)
                with contextlib.suppress(Exception):
                    control.close()

    return BenchResult(
        system=f"redis list (LPUSH/BRPOP) + pub/sub, {workers} worker processes",
        p50_ms=percentile(samples, 50) * 1000.0,
        p99_ms=percentile(samples, 99) * 1000.0,
        tasks_per_s=tasks_per_s,
        note=(
            f"redis-server on 127.0.0.1; latency n={n_latency} after {warmup} warm-up; "
            f"throughput n={n_throughput}, {clients} client threads"
        ),
    )


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def format_table(results: Sequence[BenchResult | tuple[str, str]]) -> str:
    """Render results as a plain-text table.

    Entries are :class:`BenchResult` or ``(system, reason)`` pairs for
    baselines that were skipped or failed.
    """
    header = ("system", "p50 ms", "p99 ms", "tasks/s")
    rows: list[tuple[str, str, str, str]] = []
    for r in results:
        if isinstance(r, BenchResult):
            rows.append((r.system, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.tasks_per_s:,.0f}"))
        else:
            rows.append((f"{r[0]} ({r[1]})", "-", "-", "-"))
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
        for i in range(4)
    ]

    def fmt(row: tuple[str, str, str, str]) -> str:
        return "  ".join([row[0].ljust(widths[0]), *(row[i].rjust(widths[i]) for i in range(1, 4))])

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(row) for row in rows)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected baselines and print a table; return an exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n-latency", type=int, default=300)
    parser.add_argument("--n-throughput", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4, help="redis-queue worker processes")
    parser.add_argument("--only", choices=("celery", "redis-queue"), default=None)
    args = parser.parse_args(argv)

    results: list[BenchResult | tuple[str, str]] = []
    status = 0
    try:
        if args.only in (None, "celery"):
            if celery_available():
                try:
                    results.append(run_celery(args.n_latency, args.n_throughput, args.clients))
                except Exception as exc:  # noqa: BLE001 - report, go on with the next
                    print(f"celery baseline failed: {exc}", file=sys.stderr)
                    results.append(("celery + redis", "failed"))
                    status = 1
            else:
                results.append(("celery + redis", "skipped: run bench/setup.sh"))
        if args.only in (None, "redis-queue"):
            if redis_available():
                try:
                    results.append(
                        run_redis_queue(
                            args.n_latency, args.n_throughput, args.clients, args.workers
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - report, go on with the next
                    print(f"redis-queue baseline failed: {exc}", file=sys.stderr)
                    results.append(("redis list + pub/sub", "failed"))
                    status = 1
            else:
                results.append(("redis list + pub/sub", "skipped: run bench/setup.sh"))
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark processes were stopped", file=sys.stderr)
        return 130
    print(format_table(results))
    for r in results:
        if isinstance(r, BenchResult) and r.note:
            print(f"  {r.system}: {r.note}")
    return status


if __name__ == "__main__":
    sys.exit(main())
