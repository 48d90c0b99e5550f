"""Stream clients' CPU: many `task.stream()`s at once, what they cost the client per word.

Run from the repository root::

    .venv/bin/python -m bench.stream_clients                           # this checkout
    .venv/bin/python -m bench.stream_clients --mesh-commit 6983c10     # that commit beside it

Per side and round: a server (`kanbanmesh serve --no-persist`, embedded broker), echo worker
processes (4 x 4 slots by default: most streams wait for a slot, as under load), and two
client processes; each client submits its share of the streams (128 in all by default) and
follows every one with the SDK's `task.stream()` until all are done. What is reported is CPU time (user + system) of each
process over the streaming phase only (connections made, workers present, then a start
signal), not wall time: the machine may be shared, and CPU seconds say what the work cost.

The main number is the clients' CPU per streamed word (the words of the streamed texts);
the server's and the workers' CPU over the same phase are there for context. With
`--mesh-commit REV`, that commit of this checkout runs too (exported read-only with `git
archive`, as `bench.serving` does), server, workers and clients alike, alternating with this
checkout round by round so that whatever else the machine does weighs on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


# -- the client process (run as a script, so that it imports the SDK of the side measured) ---

async def _client(url: str, streams: int, words: int, workers: int) -> dict[str, float]:
    import anyio

    from client_sdk import AsyncClient

    prompt = " ".join(f"w{i}" for i in range(words))
    texts: list[str] = []
    async with AsyncClient(url) as client:
        await client.wait_for_workers(workers, timeout_s=60)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the start signal
        cpu, wall, updates = time.process_time(), time.perf_counter(), client.peer.remote_updates
        pieces = 0

        async def follow(task: object) -> None:
            nonlocal pieces
            text = ""
            async for piece in task.stream():  # type: ignore[attr-defined]
                text += piece
                pieces += 1
            texts.append(text)

        with anyio.fail_after(600):
            async with anyio.create_task_group() as tg:
                for _ in range(streams):
                    tg.start_soon(follow, await client.submit(prompt, durable_timeout_s=None))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        updates = client.peer.remote_updates - updates
    return {"cpu_s": cpu, "wall_s": wall, "words": sum(len(t.split()) for t in texts),
            "pieces": pieces, "updates": updates}


# -- the harness -------------------------------------------------------------------------------

@dataclass
class Side:
    label: str
    source: Path  # the source tree its processes import from

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.source)}

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        # cwd=source: `python -m kanbanmesh` puts the working directory first on the path
        return subprocess.Popen(argv, cwd=self.source, env=self.env(), text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


@dataclass
class Round:
    client_cpu_s: float
    words: int
    pieces: int  # what the streams yielded, all clients
    updates: int  # updates the clients received from the server
    server_cpu_s: float
    workers_cpu_s: float
    wall_s: float

    @property
    def client_us_per_word(self) -> float:
        return self.client_cpu_s / self.words * 1e6


def run_round(side: Side, args: argparse.Namespace) -> Round:
    from bench.dispatch import _free_port, stop_processes, wait_healthy
    from bench.serving import process_cpu_s

    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    python = sys.executable
    server = side.popen([python, "-m", "kanbanmesh", "serve", "--port", str(port), "--no-persist"],
                        stdout=subprocess.DEVNULL)
    procs: list[subprocess.Popen[str]] = [server]
    try:
        wait_healthy(port, 60, server)  # type: ignore[arg-type]
        workers = [
            side.popen([python, "-m", "kanbanmesh", "worker", "--url", url, "--backend", "echo",
                        "--echo-delay", str(args.delay_ms), "--slots", str(args.slots), "--name", f"bench-{i}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(args.workers)
        ]
        procs += workers
        share = [args.streams // args.clients + (i < args.streams % args.clients) for i in range(args.clients)]
        clients = [
            side.popen([python, str(HERE / "stream_clients.py"), "--client", url, "--streams", str(n),
                        "--words", str(args.words), "--workers", str(args.workers)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for n in share
        ]
        procs += clients
        for client in clients:
            assert client.stdout is not None and client.stdin is not None
            line = client.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a client did not get ready: {line!r}")
        before = [process_cpu_s(p.pid) for p in [server, *workers]]
        for client in clients:
            client.stdin.write("go\n")  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]
        results = [json.loads(client.communicate(timeout=900)[0].splitlines()[-1]) for client in clients]
        after = [process_cpu_s(p.pid) for p in [server, *workers]]
    finally:
        stop_processes(procs)
    expected = args.streams * (args.words + 1)  # "echo:" and the prompt's words
    words = sum(int(r["words"]) for r in results)
    if words != expected:
        raise RuntimeError(f"{side.label}: streamed {words} words, expected {expected}")
    return Round(
        client_cpu_s=sum(r["cpu_s"] for r in results),
        words=words,
        pieces=sum(int(r["pieces"]) for r in results),
        updates=sum(int(r["updates"]) for r in results),
        server_cpu_s=after[0] - before[0],
        workers_cpu_s=sum(after[1:]) - sum(before[1:]),
        wall_s=max(r["wall_s"] for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=128, help="streams in all (default 128)")
    parser.add_argument("--clients", type=int, default=2, help="client processes sharing them (default 2)")
    parser.add_argument("--workers", type=int, default=4, help="echo worker processes (default 4)")
    parser.add_argument("--words", type=int, default=100, help="words of each prompt, echoed back (default 100)")
    parser.add_argument("--slots", type=int, default=4, help="slots per worker (default 4: most streams wait)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="echo delay between words (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side; each number is the median")
    parser.add_argument("--mesh-commit", default=None,
                        help="also run this commit of the checkout (exported with `git archive`)")
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # a client process: its URL
    args = parser.parse_args()
    if args.client is not None:
        # Run as a script: its folder (bench/, whose rag.py would shadow the `rag` package) off
        # the path, so that everything comes from the side's source tree.
        if sys.path and Path(sys.path[0]).resolve() == HERE:
            sys.path.pop(0)
        import anyio

        print(json.dumps(anyio.run(_client, args.client, args.streams, args.words, args.workers)), flush=True)
        return

    from bench.serving import export_commit

    sides = [Side("this checkout", HERE.parent)]
    if args.mesh_commit is not None:
        source, sha = export_commit(args.mesh_commit)
        sides.insert(0, Side(f"commit {sha}", source))
    rounds: dict[str, list[Round]] = {side.label: [] for side in sides}
    for i in range(args.rounds):
        for side in sides:
            result = run_round(side, args)
            rounds[side.label].append(result)
            print(f"round {i + 1}, {side.label}: clients {result.client_cpu_s:.2f} s CPU, "
                  f"{result.client_us_per_word:.0f} us/word", flush=True)

    print(f"\nmachine: {os.cpu_count()} cores; {args.streams} streams from {args.clients} client processes, "
          f"{args.words + 1} words each, {args.workers} echo workers x {args.slots} slots "
          f"({args.delay_ms:g} ms a word); "
          f"CPU seconds over the streaming phase, median of {args.rounds} alternating round(s)\n")
    head = ("side", "client CPU us/word", "clients CPU s", "server CPU s", "workers CPU s", "wall s",
            "updates in", "pieces out")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for label, results in rounds.items():
        def med(values: list[float]) -> float:
            return statistics.median(values)

        print(f"| {label} | {med([r.client_us_per_word for r in results]):.0f} "
              f"| {med([r.client_cpu_s for r in results]):.2f} | {med([r.server_cpu_s for r in results]):.2f} "
              f"| {med([r.workers_cpu_s for r in results]):.2f} | {med([r.wall_s for r in results]):.1f} "
              f"| {med([r.updates for r in results]):.0f} | {med([r.pieces for r in results]):.0f} |")


if __name__ == "__main__":
    main()
