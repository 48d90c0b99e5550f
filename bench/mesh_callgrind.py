"""Instructions per task of one real process of the mesh, on the latency path, by callgrind.

A real server (embedded broker, SQLite on) and echo workers run as `kanbanmesh up` runs them;
this script is the client and runs one task at a time, as `bench.dispatch`'s latency loop
does. One process runs under `valgrind --tool=callgrind` with its instrumentation switched on
only around the timed tasks (`callgrind_control`), so start-up and warm-up do not count. On a
machine whose timings swing by 30-60% from one run to the next, these counts repeat within ~1%.

    .venv/bin/python -m bench.mesh_callgrind --process server          # 4 echo workers
    .venv/bin/python -m bench.mesh_callgrind --process worker --workers 1
    valgrind --tool=callgrind --instr-atstart=no .venv/bin/python -m bench.mesh_callgrind \\
        --process client --workers 1                                   # the client: itself

Needs valgrind (Debian: `apt-get install valgrind`); not installed by scripts/install.sh.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import anyio

from bench.dispatch import _free_port, _kanbanmesh, wait_healthy
from client_sdk import AsyncClient


def _callgrind(out: Path, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out / name}.cg"]


def _instrument(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)],
                   stdout=subprocess.DEVNULL, check=False)


def _instructions(log: Path) -> int:
    """The last "I refs" total a callgrind run wrote to its log."""
    lines = [line for line in log.read_text().splitlines() if "I   refs" in line]
    if not lines:
        raise SystemExit(f"no callgrind total in {log}: did the process run under valgrind?")
    return int(lines[-1].split()[-1].replace(",", ""))


async def _loop(url: str, workers: int, tasks: int, measured_pid: int) -> None:
    async with AsyncClient(url) as client:
        await client.wait_for_workers(workers, timeout_s=300)
        for i in range(20):  # warm-up, not counted
            await (await client.submit(f"warm {i}", durable_timeout_s=None)).wait(timeout_s=120)
        _instrument(measured_pid, True)
        for i in range(tasks):
            await (await client.submit(f"latency probe {i}", durable_timeout_s=None)).wait(timeout_s=120)
        _instrument(measured_pid, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--process", choices=["server", "worker", "client"], default="server")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=150)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="mesh-callgrind-"))
    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONHASHSEED="0")
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}

    def start(name: str, argv: list[str], measured: bool) -> subprocess.Popen[bytes]:
        logs[name] = out / f"{name}.log"
        proc = subprocess.Popen([*(_callgrind(out, name) if measured else []), *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=logs[name].open("w"))
        procs.append(proc)
        return proc

    try:
        server = start("server", _kanbanmesh("serve", "--port", str(port), "--data-dir", str(out / "data")),
                       args.process == "server")
        wait_healthy(port, 300, server)  # under valgrind it starts in ~1 min
        measured = server
        for i in range(args.workers):
            worker = start(f"worker-{i}", _kanbanmesh("worker", "--url", url, "--backend", "echo", "--name", f"cg-{i}"),
                           args.process == "worker" and i == 0)
            if args.process == "worker" and i == 0:
                measured = worker
        pid = os.getpid() if args.process == "client" else measured.pid
        anyio.run(_loop, url, args.workers, args.tasks, pid)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    if args.process == "client":
        print(f"client: run under valgrind; its own total is printed at exit ({args.tasks} tasks)")
        return
    name = "server" if args.process == "server" else "worker-0"
    total = _instructions(logs[name])
    print(f"{args.process}: {total // args.tasks:,} instructions per task "
          f"({args.tasks} tasks, {args.workers} echo workers; logs in {out})")


if __name__ == "__main__":
    main()
