"""Authorization benchmark: dispatch with auth on against auth off, on a board of 10,000 done tasks.

Run from the repository root::

    .venv/bin/python -m bench.authz

Both configurations run the same mesh as `bench/dispatch.py` (server with its embedded broker
and SQLite persistence, 4 echo worker processes, clients in this process), on a board that
already holds `--board-tasks` finished tasks (written straight into `done` by an admin peer;
the server keeps them, `--retention-seconds` being a year). With auth on, every connection
carries a token (clients a client token, workers a worker token in `KANBANMESH_TOKEN`) and every
update goes through the per-role write rules; the per-owner limits are raised out of the way
(the benchmark's 10 clients share one subject). Off and on alternate round by round; each number
is the median of the rounds.

Measured as in `bench/dispatch.py` (its `_latency` and `_throughput`): p50/p99 of one task at
a time, submit to seen in `done`; tasks/s of `--throughput-tasks` tasks from 10 clients. And,
in process without network or other processes (so without their noise), the server's time
checking the updates of one task through the room's validator, and the write rules' share.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import httpx
from pycrdt import Doc, Map

from bench import dispatch
from bench.baselines import BenchResult
from client_sdk import AsyncClient
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.roles import PeerRole, TokenRole
from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.authz import WriteRules
from kanbanmesh.server.quota import OwnerQuota, QuotaLimits
from kanbanmesh.server.validation import UpdateChanges, UpdateValidator

_SECRET = "bench-authz-" + "k" * 40
_YEAR_S = 365 * 24 * 3600.0
_NO_LIMIT = str(1 << 30)


def _token(role: TokenRole, subject: str) -> str:
    return create_token(_SECRET, Identity(subject=subject, role=role, boards=["*"]), 24 * 3600)


@contextmanager
def authz_mesh(auth: bool, workers: int) -> Iterator[str]:
    """`kanbanmesh up`: a server (auth on or off, finished tasks kept) and `workers` echo worker
    processes (with auth on, `up` hands them a worker token)."""
    port = dispatch._free_port()
    with tempfile.TemporaryDirectory() as data:
        args = ["up", "--port", str(port), "--data-dir", data, "--backend", "echo",
                "--workers", str(workers), "--retention-seconds", str(_YEAR_S),
                "--max-open-tasks", _NO_LIMIT, "--max-submissions-per-minute", _NO_LIMIT]
        if auth:
            secret_file = Path(data) / "secret"
            secret_file.write_text(_SECRET)
            args += ["--auth-secret-file", str(secret_file)]
        log = Path(data) / "up.log"
        with log.open("wb") as out:
            mesh = subprocess.Popen(dispatch._kanbanmesh(*args), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _healthy(port):
                if mesh.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`kanbanmesh up` did not come up:\n{log.read_text()[-2000:]}")
                time.sleep(0.05)
            yield f"ws://127.0.0.1:{port}"
        finally:
            mesh.terminate()  # SIGTERM: up drains and stops its workers, then its server
            try:
                mesh.wait(30)
            except subprocess.TimeoutExpired:
                mesh.kill()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def fill_done(board: BoardDoc, start: int, stop: int) -> None:
    """Finished tasks `start`..`stop` - 1, straight into `done`, in one transaction."""
    done, now = board.column_map(Column.DONE), now_ms()
    with board.doc.transaction():
        for i in range(start, stop):
            task_id = f"prefill-{i:06d}"
            done[task_id] = Map({
                c.F_ID: task_id, c.F_OWNER: "prefill", c.F_MODEL: "", c.F_PROMPT: f"old task {i}",
                c.F_PARAMS: {}, c.F_PRIORITY: 0, c.F_CREATED_AT: now, c.F_WORKER: "bench-0",
                c.F_ATTEMPT: 1, c.F_STATUS: "succeeded", c.F_RESULT: f"echo: old task {i}",
                c.F_TOKENS: 4, c.F_FINISHED_AT: now,
            })


async def prefill(url: str, token: str | None, count: int, batch: int = 500) -> None:
    """Write `count` finished tasks straight into `done`, as an admin, and wait for the disk."""
    async with BoardPeer(url, token=token) as peer:
        for start in range(0, count, batch):
            fill_done(peer.board, start, min(start + batch, count))
            await peer.durable(120)


class _Writer:
    """A peer's replica of the board, turning its writes into updates."""

    def __init__(self, board: Doc[Any]) -> None:
        self.doc: Doc[Any] = Doc()
        self.doc.apply_update(board.get_update())
        self.board = BoardDoc(self.doc)

    def write(self, act: Callable[[BoardDoc], object]) -> bytes:
        before = self.doc.get_state()
        act(self.board)
        return self.doc.get_update(before)


@functools.cache
def _filled_board(board_tasks: int) -> bytes:
    doc: Doc[Any] = Doc()
    for start in range(0, board_tasks, 1000):
        fill_done(BoardDoc(doc), start, min(start + 1000, board_tasks))
    return doc.get_update()


def checking_work(board_tasks: int, tasks: int, chunks: int = 4) -> tuple[float, float]:
    """Server time spent checking the updates of one task, and the share of it the write rules
    (and the client's quota) take: microseconds, mean over `tasks`. In process, without network
    or other processes: the client's submission, the worker's move to doing, `chunks` output
    appends (the echo answer to a latency probe is 4 words) and its move to done, each through
    the room's validator with the connection's rules. The broker's assignment is the server's
    own write (mirrored, not checked)."""
    server: Doc[Any] = Doc()
    server.apply_update(_filled_board(board_tasks))
    board = BoardDoc(server)
    validator = UpdateValidator(server, EntryLimits())
    client, worker = _Writer(server), _Writer(server)
    peers = (client, worker)
    writers: dict[int, str] = {}
    quota = OwnerQuota(QuotaLimits(1 << 30, 1 << 30))
    client_rules = WriteRules(Identity(subject="bench-client", role=TokenRole.CLIENT, boards=["*"]),
                              lambda: board, lambda: (frozenset(), frozenset()), writers)
    worker_rules = WriteRules(Identity(subject="bench-worker", role=TokenRole.WORKER, boards=["*"]),
                              lambda: board, lambda: (frozenset({"w-1"}), frozenset({"bench"})), writers)

    def as_client(changes: UpdateChanges) -> None:
        client_rules(changes)
        quota.admit(changes, time.monotonic())

    checking = authorizing = 0.0

    def deliver(update: bytes, authorize: Callable[[UpdateChanges], None], source: _Writer) -> None:
        nonlocal checking

        def timed(changes: UpdateChanges) -> None:
            nonlocal authorizing
            start = time.perf_counter()
            authorize(changes)
            authorizing += time.perf_counter() - start

        start = time.perf_counter()
        validator.check(update, timed)
        checking += time.perf_counter() - start
        server.apply_update(update)
        for peer in peers:
            if peer is not source:
                peer.doc.apply_update(update)

    def one_task(task_id: str) -> None:
        request = TaskRequest(id=task_id, owner="bench-client", prompt="a task", created_at=now_ms())
        deliver(client.write(lambda b: b.create(request)), as_client, client)
        before = server.get_state()
        board.move(task_id, Column.TODO, Column.PREPARED, PeerRole.BROKER,
                   set_fields={c.F_WORKER: "w-1", c.F_ATTEMPT: 1, c.F_ASSIGNED_AT: now_ms()})
        assigned = server.get_update(before)
        validator.mirror(assigned)
        for peer in peers:
            peer.doc.apply_update(assigned)
        deliver(worker.write(lambda b: b.move(task_id, Column.PREPARED, Column.DOING, PeerRole.WORKER,
                                              set_fields={c.F_STARTED_AT: now_ms()}, new_output=True)),
                worker_rules, worker)

        def append(b: BoardDoc) -> None:
            output = b.column_map(Column.DOING)[task_id][c.F_OUTPUT]
            output += "word "

        for _ in range(chunks):
            deliver(worker.write(append), worker_rules, worker)
        finished = {c.F_STATUS: "succeeded", c.F_RESULT: "done", c.F_FINISHED_AT: now_ms(), c.F_TOKENS: chunks}
        deliver(worker.write(lambda b: b.move(task_id, Column.DOING, Column.DONE, PeerRole.WORKER,
                                              set_fields=finished)),
                worker_rules, worker)

    for i in range(tasks):
        one_task(f"bench-{i:06d}")
    return checking / tasks * 1e6, authorizing / tasks * 1e6


def run_config(auth: bool, args: argparse.Namespace) -> BenchResult:
    """One round of one configuration: a fresh mesh, the board filled, latency, throughput."""
    with authz_mesh(auth, args.workers) as url:
        anyio.run(prefill, url, _token(TokenRole.ADMIN, "bench-admin") if auth else None, args.board_tasks)
        # dispatch's helpers open plain AsyncClients: with auth on, hand them a client token.
        client = functools.partial(AsyncClient, token=_token(TokenRole.CLIENT, "bench-client")) if auth else AsyncClient
        with mock.patch.object(dispatch, "AsyncClient", client):
            samples = anyio.run(dispatch._latency, url, args.latency_tasks, args.workers)
            tps = anyio.run(dispatch._throughput, url, args.throughput_tasks, args.clients)
    q = statistics.quantiles(samples, n=100)
    label = f"authorization {'on' if auth else 'off'}, {args.board_tasks:,} done tasks on the board"
    return BenchResult(label, statistics.median(samples), q[98], tps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board-tasks", type=int, default=10_000)
    parser.add_argument("--latency-tasks", type=int, default=300)
    parser.add_argument("--throughput-tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="off and on run in turn this many times; each number is the median")
    args = parser.parse_args()

    rounds: dict[bool, list[BenchResult]] = {False: [], True: []}
    checking: list[tuple[float, float]] = []
    for _ in range(args.rounds):
        for auth in (False, True):  # alternating: whatever else the machine does weighs on both
            rounds[auth].append(run_config(auth, args))
        checking.append(checking_work(args.board_tasks, args.latency_tasks))
    off, on = (dispatch._median_result(rounds[auth]) for auth in (False, True))
    print(f"\nmachine: {os.cpu_count()} cores; {args.board_tasks:,} done tasks on the board; "
          f"{args.latency_tasks} latency tasks, {args.throughput_tasks} throughput tasks from "
          f"{args.clients} clients, {args.workers} echo workers; median of {args.rounds} "
          f"alternating round(s)\n")
    print(f"| {'configuration':<58} | {'p50 ms':>7} | {'p99 ms':>7} | {'tasks/s':>8} |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for r in (off, on):
        print(f"| {r.system:<58} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | {r.tasks_per_s:>8.0f} |")
    ratio = on.tasks_per_s / off.tasks_per_s
    added = on.p50_ms - off.p50_ms
    print(f"\nthroughput with authorization / without: {ratio:.2f} (target >= 0.8: "
          f"{'met' if ratio >= 0.8 else 'NOT met'})")
    print(f"p50 latency added by authorization: {added:+.2f} ms (target < 1 ms: "
          f"{'met' if added < 1.0 else 'NOT met'})")
    check_us, authz_us = (statistics.median(values) for values in zip(*checking, strict=True))
    print(f"server time checking one task's updates (in process): {check_us:.0f} us, of which "
          f"the write rules and quota {authz_us:.0f} us\n")
    for r in (off, on):
        print(f"{r.system}: {r.note}")
    print("checking one task: " + ", ".join(f"{total:.0f} us ({rules:.0f} us rules)" for total, rules in checking))


if __name__ == "__main__":
    main()
