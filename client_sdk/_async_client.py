"""The asynchronous Python client of a kanbanmesh board."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack
from typing import Any, Self
from urllib.parse import quote

import anyio
import httpx
from pycrdt import Map
from pydantic import ValidationError

from awareness.states import PeerPresence, WorkerPresence, workers_from_states
from client_sdk._models import BoardSnapshot
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import (
    entry_from_fields,
    entry_from_map,
    request_from_fields,
)
from kanbanmesh.board.events import ColumnWatch, event_keys
from kanbanmesh.board.follow import KeyedSignals, TaskFollower, TaskSignals
from kanbanmesh.board.limits import EntryLimits, check_fields
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import ChatMessage, RagSpec, TaskEntry, TaskParams, TaskStatus
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import (
    BoardRotatedError,
    ConnectError,
    InvalidTaskError,
    KanbanMeshError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
)
from kanbanmesh.peer import BoardPeer, TokenSource, http_base
from kanbanmesh.wire.conversations import ConversationSummary, Turn
from kanbanmesh.wire.kpis import BoardKpis


def new_task_id() -> str:
    return uuid.uuid4().hex


def rag_spec(rag: str | RagSpec | dict[str, Any] | None) -> dict[str, Any] | None:
    """A task's `rag` field from a collection name, a `RagSpec` or its fields."""
    if rag is None:
        return None
    if isinstance(rag, str):
        return RagSpec(collection=rag).model_dump()
    return rag.model_dump() if isinstance(rag, RagSpec) else dict(rag)


class AsyncClient:
    """A connection to one board: submit tasks, stream them, look at the board.

    Use it as an async context manager::

        async with AsyncClient("ws://127.0.0.1:8765", "default") as client:
            task = await client.submit("Tell me a joke", params={"max_tokens": 64})
            async for chunk in task.stream():
                print(chunk, end="", flush=True)
            entry = await task.result()

    The client reconnects by itself after a dropped connection; streams resume where they were.
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        board: str = c.DEFAULT_BOARD,
        *,
        token: TokenSource = None,
        owner: str = "",
        connect_timeout_s: float = 10.0,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        """
        Args:
            url: The server, `ws://HOST:PORT`.
            board: The board name (one shared document per board).
            token: An access token, sent as `?token=` (servers with auth on need one); or a
                function returning the current token, asked at every connection and request,
                so that a long-lived client renews its token before it expires (the server
                closes a connection whose token expired with 4401).
            owner: The owner written into submitted tasks.
            connect_timeout_s: How long the first connection and sync may take.
            max_message_bytes: The largest websocket message accepted.
        """
        self.url = url
        self.board = board
        # A server with auth on wants the token's subject as the owner of our tasks.
        self.id = f"client-{uuid.uuid4().hex[:12]}"
        self._connect_timeout_s = connect_timeout_s
        self._token = token
        self._http: httpx.AsyncClient | None = None  # made on first use, kept alive
        self._peer = BoardPeer(
            url, board, token=token, max_message_bytes=max_message_bytes,
            connect_timeout_s=connect_timeout_s,
        )
        self.owner = owner or self._peer.subject or ""
        self._exit_stack: AsyncExitStack | None = None  # holds the peer's task group while connected
        # Tasks someone waits on to finish, each with its signal and how many wait on it: a
        # change of the `done` column wakes only the waits on the tasks it touched, so many
        # waits at once (a batch gathered) cost one look each per change of their own task,
        # not one each per change of the board.
        self._finish_waits = KeyedSignals()
        self._done_watch = ColumnWatch(lambda: self._peer.board.column_map(Column.DONE), self._on_done_event)
        # The same for streams: each wakes only for changes of its own task.
        self._task_signals = TaskSignals(lambda: self._peer.board)
        self._peer.on_reset(self._on_new_replica)
        self._peer.on_stop(self._wake_finish_waits)
        self._peer.on_stop(self._task_signals.notify_all)

    @property
    def peer(self) -> BoardPeer:
        """The underlying document peer (for advanced use: the raw pycrdt document)."""
        return self._peer

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and wait for the first full sync.

        Raises:
            ConnectError: the server cannot be reached or refused the connection.
        """
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            with anyio.fail_after(self._connect_timeout_s + 5):
                await tg.start(self._peer.start)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await stack.aclose()  # the error is raised as it is, not in an exception group
            if isinstance(exc, BaseExceptionGroup):
                inner = [e for e in exc.exceptions if isinstance(e, KanbanMeshError)]
                if inner:
                    raise inner[0] from None
            raise
        self._exit_stack = stack
        self._done_watch.start()
        self._peer.set_presence({c.A_ROLE: PeerRole.CLIENT.value, c.A_ID: self.id, c.A_NAME: self.owner})

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()
        if self._exit_stack is None:
            return
        stack, self._exit_stack = self._exit_stack, None
        self._done_watch.stop()  # or the replica stays alive (ColumnWatch)
        await self._peer.flush_presence_and_stop()
        await stack.aclose()

    def _on_new_replica(self) -> None:
        self._done_watch.restart()
        self._task_signals.reset()
        self._wake_finish_waits()  # what they wait for is looked up in the new replica

    def _on_done_event(self, event: Any) -> None:
        if self._finish_waits:
            for task_id in event_keys(event):  # entered `done`, or left it (archived)
                self._finish_waits.notify(task_id)

    def _wake_finish_waits(self) -> None:
        self._finish_waits.notify_all()

    async def _wait_finish_change(self, task_id: str, timeout_s: float) -> None:
        """Wait until `task_id` enters or leaves `done`, the replica is replaced, the peer
        stops for good, or `timeout_s` passes; raises the peer's error if it stopped."""
        self._raise_if_broken()
        with self._finish_waits.holding(task_id) as signal, anyio.move_on_after(timeout_s):
            await signal.wait()
        self._raise_if_broken()

    # -- tasks ---------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | dict[str, Any]] | None = None,
        model: str = "",
        params: TaskParams | dict[str, Any] | None = None,
        priority: int = 0,
        task_id: str | None = None,
        conversation: str | None = None,
        rag: str | RagSpec | dict[str, Any] | None = None,
        durable_timeout_s: float | None = 10.0,
        **extra: Any,
    ) -> TaskHandle:
        """Put a task into `todo` and return its handle once the server has it on disk.

        Args:
            prompt: A bare prompt (or give `messages`).
            messages: Chat turns, `{"role": ..., "content": ...}`.
            model: The model to run on ("" = any worker).
            params: max_tokens, temperature, top_p, stop, seed.
            priority: Higher runs first.
            task_id: Your own id (default: a random one).
            conversation: Continue (or start) this conversation of yours: send only the new
                turn; the worker gets the earlier ones too.
            rag: Retrieval: a collection name (its top 4 chunks), or `RagSpec(collection, k)`.
                The server puts the chunks closest to your question into the prompt; the
                finished entry's `citations` name the sources the answer was given.
            durable_timeout_s: How long to wait for the server to confirm the task is stored
                (it survives a server crash from then on); None returns at once, when the
                task is only written locally (it is still sent, and re-sent after reconnects).
            **extra: Other request fields, as docs/protocol.md section 2 names them: for
                instance `tools`, `tool_choice`, `parallel_tool_calls` and
                `response_format` (tool calling and structured output, section 12); the
                finished entry then has `tool_calls`, and with `params={"logprobs": True}`,
                `logprobs`.

        Raises:
            InvalidTaskError: the request fails the task schema or the server's value bounds
                (`TaskTooLargeError`: over its size limit).
            TransportError: the server did not confirm the task in time (it may still get it).
            UpdateRefusedError: the server refused the task.
        """
        self._raise_if_broken()
        request = request_from_fields(
                {
                    "id": task_id or new_task_id(),
                    "owner": self.owner,
                    "model": model,
                    "messages": [
                        m.model_dump() if isinstance(m, ChatMessage) else m for m in messages
                    ]
                    if messages is not None
                    else None,
                    "prompt": prompt,
                    "params": params if params is not None else {},
                    "priority": priority,
                    "conversation": conversation,
                    "rag": rag_spec(rag),
                    **extra,
                }
            )
        # Within the limits the server published, or it would refuse the write (and with it
        # whatever else the same message carried): refused here instead, with the reason.
        limits = EntryLimits.of_board(self._peer.board)
        if limits is not None:
            check_fields(request.to_fields(), limits, measure_entry=False)
        self._peer.board.create(request)
        if durable_timeout_s is not None:
            for _ in range(3):
                try:
                    await self._peer.durable(durable_timeout_s)
                    break
                except BoardRotatedError:
                    # The task may have gone with the old replica: write it again unless
                    # the new generation has it.
                    await self._peer.wait_synced(durable_timeout_s)
                    if self._peer.board.locate(request.id) is None:
                        self._peer.board.create(request)
            else:
                raise BoardRotatedError("the board kept moving to new generations")
        return TaskHandle(self, request.id)

    def task(self, task_id: str) -> TaskHandle:
        """A handle on an existing task."""
        return TaskHandle(self, task_id)

    def get(self, task_id: str) -> tuple[Column, TaskEntry]:
        """The column and entry of a task on the board; raises `TaskNotFoundError`."""
        return self._peer.board.read(task_id)

    async def lookup(self, task_id: str) -> tuple[Column | None, TaskEntry]:
        """A task from the board, or from the server's archive once it left the board
        (column None); raises `TaskNotFoundError` if neither has it."""
        try:
            return self.get(task_id)
        except TaskNotFoundError:
            archived = await self.archived(task_id)
            if archived is None:
                raise
            return None, archived

    async def archived(self, task_id: str) -> TaskEntry | None:
        """A finished task from the server's archive (None if it is not archived)."""
        body = await self._http_get(f"/tasks/{quote(task_id, safe='')}")
        if body is None or body.get("column") != "archived":
            return None
        return entry_from_fields(body["entry"])

    async def stats(self, since_s: float = 3600.0) -> BoardKpis:
        """Key figures of the tasks that finished on this board in the last `since_s` seconds
        (counts by status and model, tokens, queue wait, time to first token, total time and
        tokens/s: median, p95, max), from the finished tasks' own timings."""
        body = await self._http_get(f"/stats?since={since_s:g}")
        if body is None:
            raise ConnectError(f"the server has no stats for board {self.board!r}")
        return BoardKpis.model_validate(body)

    async def conversations(self) -> list[ConversationSummary]:
        """Your conversations on this board, most recent first."""
        body = await self._http_get(f"/conversations?owner={quote(self.owner)}")
        return [ConversationSummary.model_validate(c) for c in (body or {}).get("conversations", [])]

    async def conversation(self, conversation: str) -> list[Turn]:
        """The turns of one of your conversations (empty if there is none)."""
        body = await self._http_get(f"/conversations/{quote(conversation, safe='')}?owner={quote(self.owner)}")
        return [Turn.model_validate(t) for t in (body or {}).get("turns", [])]

    async def delete_conversation(self, conversation: str) -> int:
        """Forget one of your conversations; returns how many turns went."""
        body = await self._http_get(
            f"/conversations/{quote(conversation, safe='')}?owner={quote(self.owner)}", method="DELETE"
        )
        return int((body or {}).get("deleted_turns", 0))

    async def _http_get(self, path: str, method: str = "GET") -> dict[str, Any] | None:
        """A request to /boards/<board><path> on the server (None on 404)."""
        url = f"{http_base(self.url)}/boards/{quote(self.board, safe='')}{path}"
        current = self._peer.current_token
        headers = {"Authorization": f"Bearer {current}"} if current else {}
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        try:
            reply = await self._http.request(method, url, headers=headers)
        except httpx.HTTPError as exc:
            raise ConnectError(f"cannot reach {url}: {exc}") from exc
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise ConnectError(f"{url} answered HTTP {reply.status_code}: {reply.text.strip()}")
        body: dict[str, Any] = reply.json()
        return body

    def snapshot(self) -> BoardSnapshot:
        """The board's four columns and who is connected, as of now."""
        snap = BoardSnapshot(board=self.board, workers=self.workers())
        for state in self._peer.peers().values():
            if state.get(c.A_ROLE) in (PeerRole.BROKER.value, PeerRole.CLIENT.value):
                try:
                    snap.peers.append(PeerPresence.model_validate(state))
                except ValidationError:
                    continue
        for column in Column:
            entries = getattr(snap, column.value)
            for _, ymap in self._peer.board.entries(column):
                try:
                    entries.append(entry_from_map(ymap))
                except InvalidTaskError:
                    continue
        return snap

    def workers(self) -> list[WorkerPresence]:
        """Workers present on the board, from awareness."""
        return workers_from_states(self._peer.peers())

    async def wait_for_workers(self, count: int = 1, timeout_s: float = 30.0) -> list[WorkerPresence]:
        """Wait until at least `count` workers are present."""
        with anyio.fail_after(timeout_s):
            while len(self.workers()) < count:
                self._raise_if_broken()
                with anyio.move_on_after(0.5):
                    await self._peer.presence_changed.wait()
        return self.workers()

    async def wait_changed(self, timeout_s: float | None = None) -> None:
        """Wait for the next change from the server (or the timeout)."""
        self._raise_if_broken()
        with anyio.move_on_after(timeout_s):
            await self._peer.changed.wait()
        self._raise_if_broken()

    def _raise_if_broken(self) -> None:
        if self._peer.error is not None:
            raise self._peer.error


class TaskHandle:
    """A submitted task: stream it, wait for it, cancel it."""

    def __init__(self, client: AsyncClient, task_id: str) -> None:
        self._client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def _locate(self) -> tuple[Column, Map[Any]] | None:
        try:
            return self._client.peer.board.entry(self.id)
        except TaskNotFoundError:
            return None

    def entry(self) -> tuple[Column, TaskEntry]:
        """Where the task is now, and its entry."""
        return self._client.get(self.id)

    async def stream(self) -> AsyncGenerator[str, None]:
        """Yield the output text as it arrives, then end when the task is done.

        The pieces joined equal the final `result`. After a retry (the worker died), the new
        attempt's text is followed silently while it repeats what was already yielded.
        Woken only by changes of this task, reading only what was appended
        (`kanbanmesh.board.follow`).

        Raises:
            StreamRestartedError: the retry's text differs from what was already yielded (the
                stream ends; `result()` still returns the final text).
        """
        client = self._client

        def pace(_: TaskFollower) -> float:
            client._raise_if_broken()
            return 1.0  # a safety net: the task's signal wakes us

        with (
            client._task_signals.following(self.id) as signal,
            TaskFollower(lambda: client.peer.board, self.id) as follower,
        ):
            async for piece in follower.pieces(signal, pace):
                yield piece

    async def wait(self, timeout_s: float | None = None) -> TaskEntry:
        """Wait until the task is in `done` and return its entry, whatever its status.

        A task that already left the board (archived after its retention time) is fetched
        from the server's archive."""
        with anyio.fail_after(timeout_s):
            while True:
                found = self._locate()
                if found is not None and found[0] is Column.DONE:
                    return entry_from_map(found[1])
                if found is None:
                    archived = await self._client.archived(self.id)
                    if archived is not None:
                        return archived
                # Woken when this task enters or leaves `done`, not by every change of the
                # board; the timeout covers what no event says (a task that never was here).
                await self._client._wait_finish_change(self.id, 1.0)

    async def ack(self) -> None:
        """Tell the server the result was read: the task leaves the live board for the
        archive at once instead of after the retention time. Only for a task in `done`."""
        found = self._locate()
        if found is None or found[0] is not Column.DONE:
            raise TaskNotFoundError(f"task {self.id!r} is not in done")
        found[1][c.F_ACK] = True

    async def result(self, timeout_s: float | None = None) -> TaskEntry:
        """Wait for the task to succeed and return its entry (`.result` holds the text).

        Raises:
            TaskFailedError: the task ended `failed`.
            TaskCancelledError: the task ended `cancelled`.
        """
        entry = await self.wait(timeout_s)
        if entry.status is TaskStatus.FAILED:
            err = entry.error
            raise TaskFailedError(self.id, err.code if err else "failed", err.message if err else "")
        if entry.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(self.id)
        return entry

    async def cancel(self, timeout_s: float | None = 10.0) -> TaskEntry:
        """Ask for cancellation and wait until the task is done; returns its final entry.

        A task that finished first keeps its status. The `cancel` flag is written again if the
        task moved to another column while the request was on its way.
        """
        with anyio.fail_after(timeout_s):
            while True:
                found = self._locate()
                if found is None:
                    raise TaskNotFoundError(f"no task {self.id!r} on this board")
                column, ymap = found
                if column is Column.DONE:
                    return entry_from_map(ymap)
                if not read_field(ymap, c.F_CANCEL):
                    ymap[c.F_CANCEL] = True
                await self._client.wait_changed(1.0)

