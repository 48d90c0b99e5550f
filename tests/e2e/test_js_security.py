"""Stock JavaScript clients (yjs + y-websocket, run by node) against a server with auth on.

Forbidden writes from a JS client with a valid client token are refused by closing that
connection with a code and a reason the script prints; a Python client on the same board keeps
working and sees nothing of them. Missing and bad tokens are refused before the upgrade. A JS
client with a good token submits and streams its task like any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.transitions import Column
from tests.conftest import WorkerPool
from tests.e2e.test_js import node
from tests.e2e.test_security import secure_url, secure_worker, token
from worker import Worker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]

__all__ = ["secure_url", "secure_worker"]  # fixtures, imported for the tests below

JS_SUBJECT = "js-alice"
NO_WORKER_MODEL = "no-such-model"  # keeps an accepted JS task in todo, for the board check


def js_garbage_ids(client: AsyncClient) -> dict[str, Column]:
    """The entries garbage.mjs wrote that made it onto the board, by column."""
    return {
        key: column
        for column in Column
        for key in client.peer.board.ids(column)
        if key.startswith("js-garbage-")
    }


@pytest.mark.parametrize(
    "mode, extra, code, reason",
    [
        ("illegal-column", [], c.CLOSE_FORBIDDEN, "forbidden: a client may only create tasks in todo"),
        # The task goes out alone and is taken; its status, a second update, is refused.
        ("forbidden-field", [], c.CLOSE_FORBIDDEN, "'status'"),
        ("foreign-owner", ["--owner", "somebody-else"], c.CLOSE_FORBIDDEN,
         f"forbidden: a task's owner must be you ('{JS_SUBJECT}')"),
        ("pose-as-worker", [], c.CLOSE_POLICY_VIOLATION, "a client may not announce role 'worker'"),
    ],
)
async def test_forbidden_js_writes_are_refused_and_a_python_client_sees_none_of_them(
    secure_url: str, secure_worker: Worker, js_dir: Path,
    mode: str, extra: list[str], code: int, reason: str,
) -> None:
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "py-bob")) as bob:
        before = await (await bob.submit("before")).result(timeout_s=20)
        status, events = await node(
            js_dir, "garbage.mjs", "--url", secure_url, "--mode", mode,
            "--token", token(TokenRole.CLIENT, JS_SUBJECT), "--owner", JS_SUBJECT,
            "--model", NO_WORKER_MODEL, "--expect-close", str(code), "--expect-reason", reason, *extra,
        )
        assert status == 0, events
        [answer] = events  # nothing else closed it first (relayed awareness included)
        assert answer["event"] == "closed" and answer["code"] == code and reason in str(answer["reason"])

        after = await (await bob.submit("after")).result(timeout_s=20)
        assert before.status is after.status is TaskStatus.SUCCEEDED
        assert after.result == "echo: after"
        assert bob.peer.error is None
        # Of the refused writes nothing reached the board; only forbidden-field's first,
        # allowed transaction did (the task waits in todo: no worker serves its model).
        landed = js_garbage_ids(bob)
        if mode == "forbidden-field":
            [(task_id, column)] = landed.items()
            _, entry = bob.get(task_id)
            assert column is Column.TODO and entry.owner == JS_SUBJECT and entry.status is None
        else:
            assert landed == {}
        assert not [s for s in bob.peer.peers().values() if str(s.get(c.A_ID, "")).startswith("js-fake")]
        assert [w.id for w in bob.workers()] == [secure_worker.id]


async def test_a_stock_js_client_is_not_closed_for_relaying_awareness(
    secure_url: str, secure_worker: Worker, js_dir: Path
) -> None:
    """A JS client that writes nothing and announces nothing stays connected: the server must
    not count the broker's and the worker's states, which the provider relays back as every
    stock y-websocket provider does, as its own."""
    code, events = await node(
        js_dir, "garbage.mjs", "--url", secure_url, "--mode", "connect-only",
        "--token", token(TokenRole.CLIENT, JS_SUBJECT), "--timeout-ms", "2000",
    )
    assert code == 3 and events == [{"event": "timeout", "mode": "connect-only", "connected": True}], events


@pytest.mark.parametrize(
    "make_token, status",
    [
        (lambda: None, 401),
        (lambda: "not-a-jwt", 401),
        (lambda: token(TokenRole.CLIENT, JS_SUBJECT, boards=("another-board",)), 403),
    ],
    ids=["no-token", "bad-token", "wrong-board"],
)
async def test_js_without_a_good_token_is_refused_before_the_upgrade(
    secure_url: str, js_dir: Path, make_token: object, status: int
) -> None:
    bad = make_token()  # type: ignore[operator]
    args = ["--token", bad] if bad else []
    code, events = await node(js_dir, "garbage.mjs", "--url", secure_url, "--mode", "connect-only", *args)
    assert code == 0, events
    [closed] = events
    # The handshake fails: the socket reports the HTTP status, then closes without a frame.
    assert closed["event"] == "closed" and closed["code"] == 1006, closed
    assert f"Unexpected server response: {status}" in str(closed.get("error")), closed


async def test_js_with_a_client_token_submits_and_streams(
    secure_url: str, secure_worker: Worker, js_dir: Path
) -> None:
    code, events = await node(
        js_dir, "submit.mjs", "--url", secure_url, "--token", token(TokenRole.CLIENT, JS_SUBJECT),
        "--owner", JS_SUBJECT, "--prompt", "hello from a token holder",
    )
    assert code == 0, events
    done = events[-1]
    chunks = [e["text"] for e in events if e["event"] == "chunk"]
    assert done["event"] == "done" and done["status"] == "succeeded", done
    assert done["result"] == "echo: hello from a token holder" == done["streamed"] == "".join(map(str, chunks))
    assert len(chunks) > 1 and done["worker"] == secure_worker.id
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "py-bob")) as bob:
        with anyio.fail_after(10):
            entry = await bob.task(str(done["id"])).result()
    assert entry.owner == JS_SUBJECT and entry.result == done["result"]


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
async def test_a_deep_js_task_is_refused_every_time_it_is_sent(
    auth: bool, secure_url: str, secure_worker: Worker, server_url: str, workers: WorkerPool, js_dir: Path,
) -> None:
    """A value nested 1,000 levels deep once crashed the check, and its resend after the
    reconnect reached the board unchecked (then crashed the broker, and the server at every
    restart). Now each send is refused with 4422, and the board and its other clients go on."""
    url = secure_url if auth else server_url
    if not auth:
        await workers.start()
    client_token = token(TokenRole.CLIENT, "py-bob") if auth else None
    async with AsyncClient(url, token=client_token) as bob:
        status, events = await node(
            js_dir, "garbage.mjs", "--url", url, "--mode", "deep-task", "--depth", "1000",
            *(["--token", token(TokenRole.CLIENT, JS_SUBJECT), "--owner", JS_SUBJECT] if auth else []),
            "--expect-close", str(c.CLOSE_INVALID_TASK), "--resends", "2",
        )
        assert status == 0, events
        assert [e["code"] for e in events] == [c.CLOSE_INVALID_TASK] * 3, events
        assert all("nested" in str(e["reason"]) for e in events), events
        after = await (await bob.submit("after")).result(timeout_s=20)
        assert after.result == "echo: after" and bob.peer.error is None
        assert js_garbage_ids(bob) == {}


async def test_a_js_worker_cannot_announce_another_workers_id(
    secure_url: str, secure_worker: Worker, js_dir: Path
) -> None:
    """Every worker's id is public (awareness): a worker token may still announce only ids of
    its own subject, so it can never write as another subject's worker."""
    mallory = token(TokenRole.WORKER, "js-mallory")
    status, events = await node(
        js_dir, "garbage.mjs", "--url", secure_url, "--mode", "pose-as-worker", "--token", mallory,
        "--worker-id", secure_worker.id, "--expect-close", str(c.CLOSE_POLICY_VIOLATION),
    )
    assert status == 0, events
    [closed] = events
    assert "a worker id must be 'js-mallory/<name>'" in str(closed["reason"]), closed
    # Its own subject's id is fine: announced, not closed.
    status, events = await node(
        js_dir, "garbage.mjs", "--url", secure_url, "--mode", "pose-as-worker", "--token", mallory,
        "--worker-id", "js-mallory/worker-1", "--timeout-ms", "2000",
    )
    assert status == 3 and events[-1]["event"] == "timeout", events
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "py-bob")) as bob:
        entry = await (await bob.submit("still the real worker's")).result(timeout_s=20)
    assert entry.worker == secure_worker.id and entry.result == "echo: still the real worker's"
