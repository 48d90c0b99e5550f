"""CPU per task of the server's update path, measured in one process.

The room of a real `Hub` (embedded broker, validation, fan-out; no store unless `--store`)
serves two simulated peers over memory channels: a client that creates one task at a time and
waits for it in `done`, and a worker that moves each task assigned to it through `doing` to
`done` in one update, as the echo worker does. No sockets and no other processes, so the
numbers hold still far better than `bench.dispatch`'s on a machine whose timings swing.

    .venv/bin/python -m bench.room_cpu                     # CPU ms per task, 5 rounds

Under callgrind it counts instructions instead, switched on around the timed rounds only
(`callgrind_control`); those counts repeat within ~1% from run to run:

    valgrind --tool=callgrind --instr-atstart=no .venv/bin/python -m bench.room_cpu \\
        --callgrind --tasks 60 --rounds 1       # then read "I refs" / tasks
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from pycrdt import Doc, Map, Text, merge_updates

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms, request_from_fields
from kanbanmesh.board.reads import read_field, read_items
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import ConnectionClosedError
from kanbanmesh.protocol import codec
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.hub import Hub, HubSettings
from kanbanmesh.server.store import BoardStore

WORKER_ID = "worker-bench"


class MemoryChannel:
    """Both directions of one connection as unbounded memory streams."""

    path = "/default"

    def __init__(self) -> None:
        self.to_room, self._from_peer = anyio.create_memory_object_stream[bytes](math.inf)
        self._to_peer, self.from_room = anyio.create_memory_object_stream[bytes](math.inf)

    async def send(self, message: bytes) -> bool:
        self._to_peer.send_nowait(message)
        return True

    async def recv(self) -> bytes:
        try:
            return await self._from_peer.receive()
        except anyio.EndOfStream as exc:
            raise ConnectionClosedError("closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.to_room.close()


class SimulatedPeer:
    """A replica that sends what it writes and applies what the room sends; `cpu` counts the
    thread time it spends, so that the room's share can be told apart."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self.board = BoardDoc(self.doc)
        self.channel = MemoryChannel()
        self.cpu = 0.0
        self._written: list[bytes] = []
        self._applying = False
        self.doc.observe(lambda event: None if self._applying else self._written.append(event.update))

    def push(self) -> None:
        if self._written:
            update = merge_updates(*self._written) if len(self._written) > 1 else self._written[0]
            self._written = []
            self.channel.to_room.send_nowait(codec.sync_update(update))

    async def receive(self) -> None:
        data = await self.channel.from_room.receive()
        started = time.thread_time()
        message = codec.parse_message(data)
        if isinstance(message, codec.SyncMessage):
            if message.step is codec.SyncStep.STEP1:
                self.channel.to_room.send_nowait(codec.sync_step2(self.doc.get_update(message.payload)))
            elif message.payload != codec.EMPTY_UPDATE:
                self._applying = True
                try:
                    self.doc.apply_update(message.payload)
                finally:
                    self._applying = False
        self.cpu += time.thread_time() - started


async def _run_worker(worker: SimulatedPeer) -> None:
    presence = {c.A_ROLE: PeerRole.WORKER.value, c.A_ID: WORKER_ID, c.A_NAME: "bench", c.A_MODELS: [""],
                c.A_SLOTS: 1, c.A_STATE: "ready"}
    entry = codec.AwarenessEntry(worker.doc.client_id, 1, presence)
    worker.channel.to_room.send_nowait(codec.awareness_message(codec.encode_awareness([entry])))
    prepared = worker.board.column_map(Column.PREPARED)
    while True:
        await worker.receive()
        started = time.thread_time()
        for task_id, value in read_items(prepared):
            if not isinstance(value, Map) or read_field(value, c.F_WORKER) != WORKER_ID:
                continue
            worker.board.move(task_id, Column.PREPARED, Column.DOING, PeerRole.WORKER,
                              set_fields={c.F_STARTED_AT: now_ms()}, new_output=True)
            output = worker.board.column_map(Column.DOING)[task_id][c.F_OUTPUT]
            assert isinstance(output, Text)
            for word in ("echo ", "of ", "the ", "prompt "):
                output += word
            worker.board.move(task_id, Column.DOING, Column.DONE, PeerRole.WORKER, set_fields={
                c.F_STATUS: "succeeded", c.F_RESULT: "echo of the prompt ", c.F_FINISHED_AT: now_ms(),
                c.F_TOKENS: 4, c.F_FINISH_REASON: "stop",
                c.F_USAGE: {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                c.F_TIMINGS: {"queued_ms": 1.0, "ttft_ms": 0.1, "total_ms": 0.2, "tokens_per_s": 100.0},
            })
        worker.push()
        worker.cpu += time.thread_time() - started


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   stdout=subprocess.DEVNULL, check=False)


async def measure(tasks: int, rounds: int, *, store_on: bool, callgrind: bool) -> list[tuple[float, float, float]]:
    """(room, client, worker) CPU ms per task, one triple per round."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            BoardStore(Path(tmp) / "boards.sqlite3") as store,
            TaskArchive(Path(tmp) / "archive.sqlite3") as archive,
        ):
            hub = Hub(store if store_on else None, archive, HubSettings())
            async with anyio.create_task_group() as tg:
                await tg.start(hub.start)
                room = await hub.room("default")
                client, worker = SimulatedPeer(), SimulatedPeer()
                tg.start_soon(room.serve, client.channel)
                tg.start_soon(room.serve, worker.channel)
                tg.start_soon(_run_worker, worker)
                done = client.board.column_map(Column.DONE)
                sequence = iter(range(10**9))

                async def one_task() -> None:
                    task_id = f"task-{next(sequence):08d}"
                    started = time.thread_time()
                    client.board.create(request_from_fields({"id": task_id, "owner": "",
                                                             "prompt": f"probe {task_id}"}))
                    client.push()
                    client.cpu += time.thread_time() - started
                    while task_id not in done:
                        await client.receive()

                for _ in range(30):  # warm-up
                    await one_task()
                for _ in range(rounds):
                    client.cpu = worker.cpu = 0.0
                    if callgrind:
                        _callgrind(True)
                    started = time.process_time()
                    for _ in range(tasks):
                        await one_task()
                    total = time.process_time() - started
                    if callgrind:
                        _callgrind(False)
                    results.append(((total - client.cpu - worker.cpu) / tasks * 1e3,
                                    client.cpu / tasks * 1e3, worker.cpu / tasks * 1e3))
                tg.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", action="store_true", help="persist to SQLite, as `serve` does")
    parser.add_argument("--callgrind", action="store_true",
                        help="switch callgrind's instrumentation on around the rounds only")
    args = parser.parse_args()
    rounds = anyio.run(lambda: measure(args.tasks, args.rounds, store_on=args.store, callgrind=args.callgrind))
    print(f"\n{args.tasks} tasks per round, {args.rounds} round(s), store {'on' if args.store else 'off'}\n")
    print("| round | room ms/task | simulated client | simulated worker |")
    print("|---:|---:|---:|---:|")
    for i, (room_ms, client_ms, worker_ms) in enumerate(rounds, 1):
        print(f"| {i} | {room_ms:.3f} | {client_ms:.3f} | {worker_ms:.3f} |")
    print(f"| best | {min(r[0] for r in rounds):.3f} | | |")
    print(f"| median | {statistics.median(r[0] for r in rounds):.3f} | | |")


if __name__ == "__main__":
    main()
