"""Tests of kanbanmesh.server.store.BoardStore against real SQLite files."""

from __future__ import annotations

import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Map

from kanbanmesh.errors import StoreError
from kanbanmesh.server.store import BoardStore

pytestmark = pytest.mark.anyio

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_source() -> tuple[Doc[Any], Map[Any], list[bytes]]:
    """A doc whose every transaction's update is collected, in order."""
    doc: Doc[Any] = Doc()
    tasks: Map[Any] = Map()
    doc["tasks"] = tasks
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return doc, tasks, updates


def write(tasks: Map[Any], start: int, count: int) -> None:
    """Overwrite and delete keys so that history is much bigger than the state."""
    for i in range(start, start + count):
        tasks[f"t{i % 50}"] = {"n": i, "status": "todo" if i % 3 else "done"}
        victim = f"t{(i + 1) % 50}"
        if i % 7 == 0 and victim in tasks:
            del tasks[victim]


def rebuild(updates: list[bytes]) -> dict[str, Any]:
    doc: Doc[Any] = Doc()
    tasks: Map[Any] = Map()
    doc["tasks"] = tasks
    for update in updates:
        doc.apply_update(update)
    return tasks.to_py() or {}


def count_rows(path: pathlib.Path, board: str | None = None) -> int:
    conn = sqlite3.connect(path)
    try:
        if board is None:
            row = conn.execute("SELECT COUNT(*) FROM updates").fetchone()
        else:
            row = conn.execute("SELECT COUNT(*) FROM updates WHERE board = ?", (board,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


async def test_roundtrip_500_writes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nested" / "dir" / "boards.sqlite"
    doc, tasks, updates = make_source()
    with anyio.fail_after(30):
        async with BoardStore(path) as store:
            doc.observe(lambda event: store.append("b1", event.update))
            write(tasks, 0, 500)
            assert store.pending_rows("b1") == len(updates) >= 500
        async with BoardStore(path) as store2:
            loaded = await store2.load("b1")
            assert store2.pending_rows("b1") == len(updates)
    assert loaded == updates
    assert rebuild(loaded) == tasks.to_py()


async def test_two_boards_kept_apart(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    doc_a, tasks_a, updates_a = make_source()
    doc_b, tasks_b, _ = make_source()
    with anyio.fail_after(30):
        async with BoardStore(path) as store:
            doc_a.observe(lambda event: store.append("alpha", event.update))
            doc_b.observe(lambda event: store.append("beta", event.update))
            for i in range(100):
                tasks_a[f"a{i}"] = i
                tasks_b[f"b{i}"] = -i
            store.compact("beta", doc_b.get_update())
        async with BoardStore(path) as store2:
            assert await store2.boards() == ["alpha", "beta"]
            loaded_a = await store2.load("alpha")
            loaded_b = await store2.load("beta")
            assert await store2.load("gamma") == []
            assert store2.pending_rows("alpha") == 100
            assert store2.pending_rows("beta") == 1
    assert loaded_a == updates_a
    assert len(loaded_b) == 1
    assert rebuild(loaded_a) == tasks_a.to_py() == {f"a{i}": float(i) for i in range(100)}
    assert rebuild(loaded_b) == tasks_b.to_py() == {f"b{i}": float(-i) for i in range(100)}


async def test_compact_in_the_middle_of_appends(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    doc, tasks, updates = make_source()
    with anyio.fail_after(30):
        async with BoardStore(path) as store:
            doc.observe(lambda event: store.append("b", event.update))
            write(tasks, 0, 200)
            await store.flush()  # these rows are in the file: the delete path
            write(tasks, 200, 100)  # these are still queued: same batch as the snapshot
            store.compact("b", doc.get_update())
            assert store.pending_rows("b") == 1
            write(tasks, 300, 100)  # after the snapshot: must be kept
            after = store.pending_rows("b")
            assert after > 100
            await store.flush()
            assert count_rows(path, "b") == after
            # Rows left after the flush still equal the source doc.
            assert rebuild(await store.load("b")) == tasks.to_py()
            # A second compaction, then more writes, without an explicit flush.
            store.compact("b", doc.get_update())
            before = len(updates)
            write(tasks, 400, 10)
            written_after = len(updates) - before
        async with BoardStore(path) as store2:
            loaded = await store2.load("b")
    # The snapshot plus the updates written after it, out of ~480 updates in all.
    assert len(loaded) == store.pending_rows("b") == 1 + written_after <= 15
    assert len(updates) > 400
    assert count_rows(path) == len(loaded)
    assert rebuild(loaded) == tasks.to_py()


async def test_compact_rejects_empty_snapshot(tmp_path: pathlib.Path) -> None:
    store = BoardStore(tmp_path / "b.sqlite")
    with pytest.raises(ValueError):
        store.compact("b", b"")


async def test_stop_flushes_everything_queued(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    # A long interval: only stop() can have committed these.
    store = BoardStore(path, flush_interval=3600, max_batch=100_000)
    payloads = [f"update-{i}".encode() for i in range(1000)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(store.start)
            for payload in payloads:
                store.append("b", payload)
            await store.stop()
            await store.stop()  # idempotent
        async with BoardStore(path) as store2:
            assert await store2.load("b") == payloads


async def test_cancelled_flusher_still_commits(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    store = BoardStore(path, flush_interval=3600, max_batch=100_000)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(store.start)
            for i in range(300):
                store.append("b", b"u%d" % i)
            tg.cancel_scope.cancel()
        assert count_rows(path, "b") == 300
        await store.stop()  # nothing left to do, must not fail


async def test_max_batch_wakes_flusher_early(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    with anyio.fail_after(30):
        async with BoardStore(path, flush_interval=3600, max_batch=50) as store:
            for i in range(50):
                store.append("b", b"u%d" % i)
            # Only the max_batch wake-up can commit these; poll the file from outside.
            while count_rows(path, "b") < 50:
                await anyio.sleep(0.01)


async def test_flush_blocking_from_thread_and_after_stop(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    with anyio.fail_after(30):
        async with BoardStore(path, flush_interval=3600, max_batch=100_000) as store:
            for i in range(100):
                store.append("b", b"u%d" % i)
            errors: list[StoreError] = []

            def in_thread() -> None:
                try:
                    store.flush_blocking()
                except StoreError as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            thread = threading.Thread(target=in_thread)
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
            assert not errors
            assert count_rows(path, "b") == 100
        # Closed: a late append is committed with a short-lived connection.
        store.append("b", b"late")
        store.flush_blocking()
        assert count_rows(path, "b") == 101
        # Reads work on a closed store too.
        assert (await store.load("b"))[-1] == b"late"


async def test_throughput_20000_appends(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    payloads = [b"\x01\x01" + i.to_bytes(4, "little") * 10 for i in range(20_000)]
    with anyio.fail_after(60):
        async with BoardStore(path) as store:
            started = time.perf_counter()
            for i, payload in enumerate(payloads):
                store.append(f"board-{i % 4}", payload)
            await store.flush()
            elapsed = time.perf_counter() - started
        assert count_rows(path) == 20_000
    rate = len(payloads) / elapsed
    print(f"\nBoardStore: 20000 appends committed in {elapsed:.3f} s ({rate:,.0f} updates/s)")
    assert elapsed < 10


async def test_sigkill_after_flush_keeps_flushed_updates(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    script = textwrap.dedent(
        f"""
        import pathlib
        import anyio
        from pycrdt import Doc, Map
        from kanbanmesh.server.store import BoardStore

        async def main() -> None:
            async with BoardStore(pathlib.Path({str(path)!r}), flush_interval=3600) as store:
                doc = Doc()
                tasks = Map()
                doc["tasks"] = tasks
                doc.observe(lambda event: store.append("b", event.update))
                for i in range(300):
                    tasks[f"t{{i}}"] = i
                await store.flush()
                print("flushed", flush=True)
                await anyio.sleep_forever()

        anyio.run(main)
        """
    )
    with anyio.fail_after(60):
        async with await anyio.open_process(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=PROJECT_ROOT,
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            output = b""
            while b"flushed" not in output:
                try:
                    output += await proc.stdout.receive()
                except anyio.EndOfStream:
                    err = b""
                    async for chunk in proc.stderr:
                        err += chunk
                    pytest.fail(f"child exited early: {err.decode(errors='replace')}")
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        async with BoardStore(path) as store:
            loaded = await store.load("b")
    assert rebuild(loaded) == {f"t{i}": float(i) for i in range(300)}


async def test_directory_path_gives_store_error(tmp_path: pathlib.Path) -> None:
    with anyio.fail_after(30):
        with pytest.raises(StoreError):
            async with BoardStore(tmp_path):
                pass


async def test_parent_is_a_file_gives_store_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with anyio.fail_after(30):
        with pytest.raises(StoreError):
            async with BoardStore(tmp_path / "file" / "boards.sqlite"):
                pass


async def test_corrupt_file_gives_store_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "boards.sqlite"
    path.write_bytes(b"this is not an sqlite database, not at all" * 100)
    with anyio.fail_after(30):
        with pytest.raises(StoreError):
            async with BoardStore(path):
                pass
        store = BoardStore(path)
        with pytest.raises(StoreError):
            await store.load("b")
