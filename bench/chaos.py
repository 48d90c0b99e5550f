"""Chaos benchmark: tasks keep flowing while workers, the leading broker and the server die.

Run from the repository root::

    .venv/bin/python -m bench.chaos                      # 2,000 tasks, 20 clients, 6 workers
    .venv/bin/python -m bench.chaos --tasks 300 --clients 5   # a quick look

Each process of the mesh is a subprocess, as in production::

    kanbanmesh serve --no-broker --lease-seconds 5 --data-dir TMP --port P
    kanbanmesh broker --url ws://127.0.0.1:P --lease-seconds 5                  (x2)
    kanbanmesh worker --url ... --backend echo --echo-delay 20 --heartbeat-seconds 1  (x6)

The clients submit at a steady rate from this process (one connection and one replica each).
Meanwhile a killer SIGKILLs a random worker every 2 s (and starts a replacement, so that six
stay), the leading broker once (the oldest `since` among the brokers in awareness; a
replacement is started), and the server once (restarted on the same port and data directory:
clients, workers and brokers reconnect by themselves). The chaos stops when every task has
been submitted and every kill has happened; then the mesh gets `--drain-timeout` seconds to
finish everything.

What counts:

* accepted: `AsyncClient.submit` returned, which it does once the server has confirmed the
  task is on its disk (durable submit); a submit that raised is "not acknowledged".
* completed: the task is in `done` (any status) on a ledger peer connected to the server.
* lost: accepted, and not in `done` when the drain timeout ran out.
* completed twice: a task whose entry in `done` was seen in more than one version (another
  attempt, worker or finish time) after it was first seen there, by the ledger peer (which
  gets every update at once) or by the task's own client.
* recovery after a worker kill: until the last task the worker held (prepared or doing, by
  the ledger's view at the kill) is finished (its `finished_at`); after the broker or the
  server kill: until the first task assigned after the kill is finished.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.dispatch import _free_port, _kanbanmesh
from client_sdk import AsyncClient, Column
from client_sdk._async_client import new_task_id
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.errors import KanbanMeshError
from kanbanmesh.peer import BoardPeer
from tests.support.ledger import OBSERVER_PRESENCE, DoneLedger

_BROKER_LINE = re.compile(r"broker (broker-[0-9a-f]+) serving")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Fleet:
    """The mesh's processes: start, SIGKILL, restart; every one logs to its own file."""

    def __init__(self, data_dir: Path, port: int, args: argparse.Namespace) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.args = args
        self.server: Proc | None = None
        self.brokers: list[Proc] = []
        self.workers: list[Proc] = []
        self._started = 0
        self._all: list[Proc] = []
        self._killed: set[int] = set()

    def _spawn(self, name: str, *cli_args: str) -> Proc:
        self._started += 1
        log = self.data_dir / f"{self._started:03d}-{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(_kanbanmesh(*cli_args), stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(name, popen, log)
        self._all.append(proc)
        return proc

    async def start_server(self) -> float:
        """Start the server; returns the seconds until it answered /healthz."""
        started = time.monotonic()
        self.server = self._spawn(
            "server", "serve", "--no-broker", "--lease-seconds", str(self.args.lease),
            "--data-dir", str(self.data_dir / "data"), "--port", str(self.port),
        )
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)).status_code == 200:
                            return time.monotonic() - started
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.02)

    def start_broker(self) -> Proc:
        proc = self._spawn(f"broker-{len(self.brokers)}", "broker", "--url", self.url,
                           "--lease-seconds", str(self.args.lease))
        self.brokers.append(proc)
        return proc

    def start_worker(self) -> Proc:
        name = f"chaos-w{len(self.workers)}"
        proc = self._spawn(name, "worker", "--url", self.url, "--backend", "echo", "--echo-delay",
                           str(self.args.echo_delay), "--heartbeat-seconds", str(self.args.heartbeat),
                           "--name", name)
        self.workers.append(proc)
        return proc

    def live(self, procs: list[Proc]) -> list[Proc]:
        return [p for p in procs if p.popen.poll() is None]

    def kill(self, proc: Proc) -> None:
        self._killed.add(id(proc))
        proc.popen.kill()  # SIGKILL: no drain, no flush, no goodbye
        proc.popen.wait(10)

    def died(self) -> list[str]:
        """Processes that exited on their own: name, status and the last line of their log."""
        return [
            f"{p.name} (status {p.popen.returncode}): "
            + (p.log.read_text(errors="replace").strip().splitlines() or [""])[-1][:200]
            for p in self._all
            if p.popen.poll() is not None and id(p) not in self._killed
        ]

    def broker_ids(self, proc: Proc) -> list[str]:
        """The ids a broker process served under (a new one after each reconnect)."""
        return _BROKER_LINE.findall(proc.log.read_text(errors="replace"))

    def stop_all(self) -> None:
        for proc in self._all:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self._all:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)


@dataclass
class Kill:
    what: str  # worker | broker | server
    at_ms: float  # wall clock, as the mesh's timestamps
    held: set[str] = field(default_factory=set)  # a worker's tasks at the kill
    worker_id: str = ""
    note: str = ""


@dataclass
class Run:
    submitted: list[str] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)  # submit errors by type
    unacknowledged: set[str] = field(default_factory=set)
    kills: list[Kill] = field(default_factory=list)
    server_restart_s: float = 0.0
    started_ms: float = 0.0
    submitted_ms: float = 0.0
    chaos_stopped_ms: float = 0.0
    drained_s: float | None = None
    died: list[str] = field(default_factory=list)  # processes that exited on their own


class Observer:
    """A ledger peer on the server: sees every update at once, and who is present."""

    def __init__(self, peer: BoardPeer) -> None:
        self.peer = peer
        self.ledger = DoneLedger(peer.board)

    def present(self, role: PeerRole) -> list[dict[str, Any]]:
        return [s for s in self.peer.peers().values() if s.get(c.A_ROLE) == role.value]

    def worker_id(self, name: str) -> str | None:
        return next((s.get(c.A_ID) for s in self.present(PeerRole.WORKER) if s.get(c.A_NAME) == name), None)

    def leader_broker_id(self) -> str | None:
        brokers = [(float(s.get(c.A_SINCE) or 0), str(s.get(c.A_ID))) for s in self.present(PeerRole.BROKER)]
        return min(brokers)[1] if brokers else None

    def held_by(self, worker_id: str) -> set[str]:
        board = self.peer.board
        return {
            task_id
            for column in (Column.PREPARED, Column.DOING)
            for task_id, entry in board.entries(column)
            if entry.get(c.F_WORKER) == worker_id
        }

    def done_ids(self) -> set[str]:
        return set(self.peer.board.ids(Column.DONE))


async def _submit_all(client: AsyncClient, index: int, count: int, interval_s: float, run: Run) -> None:
    for k in range(count):
        task_id = new_task_id()
        run.submitted.append(task_id)
        try:
            await client.submit(f"client {index} task {k} says hello", task_id=task_id, durable_timeout_s=10)
        except KanbanMeshError as exc:
            run.refused[type(exc).__name__] += 1
            run.unacknowledged.add(task_id)
        else:
            run.accepted.add(task_id)
        await anyio.sleep(interval_s * random.uniform(0.5, 1.5))


async def _kill_worker(fleet: Fleet, observer: Observer, run: Run) -> None:
    victims = fleet.live(fleet.workers)
    if not victims:
        return
    victim = random.choice(victims)
    worker_id = observer.worker_id(victim.name) or ""  # not announced yet: holds nothing
    held = observer.held_by(worker_id)
    fleet.kill(victim)
    run.kills.append(Kill("worker", time.time() * 1000, held, worker_id=worker_id, note=victim.name))
    fleet.start_worker()


async def _kill_leader_broker(fleet: Fleet, observer: Observer, run: Run) -> None:
    leader = observer.leader_broker_id()
    for proc in fleet.live(fleet.brokers):
        ids = fleet.broker_ids(proc)
        if leader is not None and ids and ids[-1] == leader:
            fleet.kill(proc)
            run.kills.append(Kill("broker", time.time() * 1000, note=f"{proc.name} ({leader})"))
            fleet.start_broker()
            return
    run.kills.append(Kill("broker", time.time() * 1000, note=f"leader {leader} not found: nothing killed"))


async def _kill_server(fleet: Fleet, run: Run) -> None:
    assert fleet.server is not None
    fleet.kill(fleet.server)
    run.kills.append(Kill("server", time.time() * 1000, note="SIGKILL, restarted on the same port and data"))
    run.server_restart_s = await fleet.start_server()


async def _chaos(fleet: Fleet, observer: Observer, run: Run, args: argparse.Namespace,
                 submitting: anyio.Event) -> None:
    """Kill on schedule until the submissions are over and every kill has happened."""
    start = time.monotonic()
    next_worker_kill = args.kill_every
    broker_killed = server_killed = False
    while not (submitting.is_set() and broker_killed and server_killed):
        now = time.monotonic() - start
        due = [next_worker_kill]
        if not broker_killed:
            due.append(args.broker_kill_at)
        if not server_killed:
            due.append(args.server_kill_at)
        await anyio.sleep(max(0.0, min(due) - now))
        now = time.monotonic() - start
        if not broker_killed and now >= args.broker_kill_at:
            await _kill_leader_broker(fleet, observer, run)
            broker_killed = True
        if not server_killed and now >= args.server_kill_at:
            await _kill_server(fleet, run)
            server_killed = True
        if now >= next_worker_kill:
            await _kill_worker(fleet, observer, run)
            next_worker_kill += args.kill_every
    run.chaos_stopped_ms = time.time() * 1000


async def _wait_until(condition: Any, peer: BoardPeer, timeout_s: float) -> bool:
    with anyio.move_on_after(timeout_s):
        while not condition():
            with anyio.move_on_after(0.5):
                await peer.changed.wait()
        return True
    return False


async def run_chaos(args: argparse.Namespace) -> tuple[Run, Observer, list[DoneLedger]]:
    data_dir = Path(tempfile.mkdtemp(prefix="kanbanmesh-chaos-"))
    fleet = Fleet(data_dir, _free_port(), args)
    run = Run()
    clean = False
    try:
        await fleet.start_server()
        for _ in range(2):
            fleet.start_broker()
        for _ in range(args.workers):
            fleet.start_worker()
        async with AsyncExitStack() as stack:
            peer = await stack.enter_async_context(BoardPeer(fleet.url, "default"))
            peer.set_presence(OBSERVER_PRESENCE)
            observer = Observer(peer)
            ready = await _wait_until(
                lambda: len(observer.present(PeerRole.WORKER)) >= args.workers
                and len(observer.present(PeerRole.BROKER)) >= 2, peer, 60)
            if not ready:
                raise RuntimeError(f"the mesh did not come up; logs in {data_dir}")
            clients = [await stack.enter_async_context(AsyncClient(fleet.url)) for _ in range(args.clients)]
            client_ledgers = [DoneLedger(client.peer.board) for client in clients]
            per_client = args.tasks // args.clients
            interval_s = args.clients / args.rate
            submitting = anyio.Event()
            run.started_ms = time.time() * 1000
            async with anyio.create_task_group() as tg:
                tg.start_soon(_chaos, fleet, observer, run, args, submitting)
                async with anyio.create_task_group() as submitters:
                    for index, client in enumerate(clients):
                        submitters.start_soon(_submit_all, client, index, per_client, interval_s, run)
                submitting.set()
                run.submitted_ms = time.time() * 1000
            drain_start = time.monotonic()
            submitted = set(run.submitted)
            if await _wait_until(lambda: submitted <= observer.done_ids(), peer, args.drain_timeout):
                run.drained_s = time.monotonic() - drain_start
            # Late writes (a worker that reconnects with a finish) land within a few seconds.
            await anyio.sleep(args.settle)
            run.died = fleet.died()
            clean = run.accepted <= observer.done_ids() and not _doubled(observer, client_ledgers) \
                and not run.died
            return run, observer, client_ledgers
    finally:
        fleet.stop_all()
        if clean and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"(process logs and data kept in {data_dir})")


def _doubled(observer: Observer, client_ledgers: list[DoneLedger]) -> dict[str, list[Any]]:
    doubled: dict[str, list[Any]] = {}
    for ledger in [observer.ledger, *client_ledgers]:
        for task_id, history in ledger.doubled().items():
            if len(history) > len(doubled.get(task_id, [])):
                doubled[task_id] = history
    return doubled


def report(run: Run, observer: Observer, client_ledgers: list[DoneLedger], args: argparse.Namespace) -> None:
    board = observer.peer.board
    done = {task_id: entry for task_id, entry in board.entries(Column.DONE)}
    statuses = Counter(str(entry.get(c.F_STATUS)) for entry in done.values())
    lost = run.accepted - set(done)
    doubled = _doubled(observer, client_ledgers)
    spread = [t for t in set(run.submitted)
              if sum(t in board.column_map(col) for col in Column) > 1]
    retried = sum(1 for entry in done.values() if float(entry.get(c.F_ATTEMPT) or 1) > 1)
    # Why attempts were lost, from each entry's history (`attempts`, written by the broker):
    # the worker was killed, or it lived on (cut off by the server's restart, say).
    killed = {k.worker_id for k in run.kills if k.worker_id}
    reasons = Counter(
        f"{record.get('reason')} ({'killed' if record.get('worker') in killed else 'alive'})"
        for entry in done.values()
        for record in (entry.get(c.F_ATTEMPTS) or []) if isinstance(record, dict)
    )

    def finished_at(task_id: str) -> float | None:
        entry = done.get(task_id)
        return float(entry.get(c.F_FINISHED_AT) or 0) if entry is not None else None

    def recovery_s(kill: Kill) -> float | None:
        if kill.what == "worker":
            # Tasks the ledger still saw held may have been finished already, their last
            # update in flight: those the kill did not touch.
            ends = [finished_at(t) for t in kill.held]
            if any(e is None for e in ends):
                return None
            hit = [(e - kill.at_ms) / 1000 for e in ends if e is not None and e > kill.at_ms]
            return max(hit, default=0.0)
        later = [float(e.get(c.F_FINISHED_AT) or 0) for e in done.values()
                 if float(e.get(c.F_ASSIGNED_AT) or 0) > kill.at_ms]
        return (min(later) - kill.at_ms) / 1000 if later else None

    worker_kills = [k for k in run.kills if k.what == "worker"]
    recoveries = {id(k): recovery_s(k) for k in worker_kills}
    hit = [k for k in worker_kills if recoveries[id(k)] != 0.0]
    worker_recoveries = [r for r in (recoveries[id(k)] for k in hit) if r is not None]
    unrecovered = len(hit) - len(worker_recoveries)
    wall_s = (max((finished_at(t) or 0) for t in done) - run.started_ms) / 1000 if done else 0.0

    submit_s = (run.submitted_ms - run.started_ms) / 1000
    rows = [
        ("tasks submitted", f"{len(run.submitted)} by {args.clients} clients in {submit_s:.0f} s"),
        ("accepted (durable submit acknowledged)", str(len(run.accepted))),
        ("not acknowledged (submit raised)", f"{len(run.unacknowledged)} {dict(run.refused) or ''}".strip()),
        ("  of those completed anyway", str(len(run.unacknowledged & set(done)))),
        ("completed (in done)", f"{len(done)}: " + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))),
        ("lost (accepted, not done)", str(len(lost))),
        ("completed twice", str(len(doubled))),
        ("in several columns at the end", str(len(spread))),
        ("finished after a retry (attempt > 1)",
         f"{retried}; lost attempts: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none")),
        ("worker kills (SIGKILL)", f"{len(worker_kills)}, {len(hit)} of them with a task running"),
        ("  until its tasks were done: median / max", _median_max(worker_recoveries)
         + (f" ({unrecovered} kill(s) with a task never finished)" if unrecovered else "")),
    ]
    for kill in run.kills:
        if kill.what != "worker":
            recovered = recovery_s(kill)
            rows.append((f"{kill.what} kill: first new task done after",
                         f"{recovered:.2f} s ({kill.note})" if recovered is not None else f"never ({kill.note})"))
    rows += [
        ("server restart until /healthz", f"{run.server_restart_s:.2f} s"),
        ("processes that died on their own", str(len(run.died))),
        ("drain after the chaos stopped", f"{run.drained_s:.1f} s" if run.drained_s is not None
         else f"not drained in {args.drain_timeout:g} s"),
        ("first submit to last finish", f"{wall_s:.1f} s ({len(done) / wall_s:.0f} tasks/s)" if wall_s else "-"),
    ]
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(value) for _, value in rows)
    print(f"\nmachine: {os.cpu_count()} cores; {args.workers} echo workers (--echo-delay "
          f"{args.echo_delay:g}, --heartbeat-seconds {args.heartbeat:g}), 2 standalone brokers, "
          f"lease {args.lease:g} s\n")
    print(f"| {'':<{width}} | {'result':<{vwidth}} |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:<{vwidth}} |")
    print("\ntasks finished per 5 s (by finished_at):", _timeline(run, done, run.kills))
    for task_id, history in list(doubled.items())[:10]:
        print(f"completed twice: {task_id}: {history}")
    for line in run.died:
        print(f"died: {line}")
    if args.verbose:
        for kill in run.kills:
            recovered = recovery_s(kill)
            print(f"kill at {(kill.at_ms - run.started_ms) / 1000:6.1f} s: {kill.what} {kill.note} "
                  f"{kill.worker_id} held {sorted(kill.held)} recovered {recovered}")
        for task_id, entry in done.items():
            for record in entry.get(c.F_ATTEMPTS) or []:
                if isinstance(record, dict) and record.get("worker") not in killed:
                    print(f"attempt lost at {(float(record.get('at') or 0) - run.started_ms) / 1000:6.1f} s "
                          f"by a live worker: {task_id} {record}")
    for task_id in sorted(lost)[:10]:
        where = [col.value for col in Column if task_id in board.column_map(col)]
        print(f"lost: {task_id} in {where or 'no column'}")


def _median_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} s / {max(values):.2f} s"


def _timeline(run: Run, done: dict[str, Any], kills: list[Kill]) -> str:
    buckets: Counter[int] = Counter()
    for entry in done.values():
        buckets[int((float(entry.get(c.F_FINISHED_AT)) - run.started_ms) // 5000)] += 1
    marks: dict[int, str] = {}
    for kill in kills:
        if kill.what != "worker":
            marks[int((kill.at_ms - run.started_ms) // 5000)] = f"[{kill.what} killed]"
    last = max(buckets, default=0)
    return " ".join(f"{buckets[i]}{marks.get(i, '')}" for i in range(last + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--rate", type=float, default=40.0, help="tasks submitted per second, all clients")
    parser.add_argument("--echo-delay", type=float, default=20.0, help="ms between echo chunks")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="worker --heartbeat-seconds")
    parser.add_argument("--lease", type=float, default=5.0, help="--lease-seconds of server and brokers")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between worker kills")
    parser.add_argument("--broker-kill-at", type=float, default=7.0, help="seconds into the chaos")
    parser.add_argument("--server-kill-at", type=float, default=17.0, help="seconds into the chaos")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to watch for late writes")
    parser.add_argument("--seed", type=int, default=None, help="for the choice of victims")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    parser.add_argument("--verbose", action="store_true", help="list every kill")
    args = parser.parse_args()
    if args.seed is not None:
        random.seed(args.seed)
    run, observer, client_ledgers = anyio.run(run_chaos, args)
    report(run, observer, client_ledgers, args)


if __name__ == "__main__":
    main()
