"""A y-websocket client of one board: a local pycrdt document kept in sync with the server.

`pycrdt.Provider` has no awareness, no reconnect and no error signal, and echoes every remote
update back to the server; this peer has all four fixed. Local updates are merged while the
socket is busy, remote updates are never sent back, and a dropped connection is retried with
backoff. After a reconnect the two sync steps exchange whatever either side missed, so local
writes made while offline reach the server.

Close codes are read as `kanbanmesh.board.constants` lists them. A refused write (4400, 4403,
4413, 4422, 4429, 1009) lives on in the replica, which would send it again at every sync: the
peer starts a new, empty replica, reconnects, and tells its `on_refused` listeners (the write
that waited on it raises the typed error). A fatal code (1002, 1008, and 4401 unless the token
source gives a fresh token) stops the peer with a typed error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Self
from urllib.parse import quote

import anyio
import jwt
from anyio.abc import TaskGroup, TaskStatus
from pycrdt import Awareness, Doc, TransactionEvent, merge_updates
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.errors import (
    BoardRotatedError,
    ConnectError,
    ConnectionClosedError,
    KanbanMeshError,
    MessageTooLargeError,
    ProtocolError,
    TransportError,
    UpdateRefusedError,
)
from kanbanmesh.notify import ChangeSignal, Listeners, Subscription
from kanbanmesh.protocol import codec

log = logging.getLogger(__name__)

# A token: as it is, or a function giving the current one (called at every connection, so
# that a long-lived peer renews its token before the server closes it with 4401).
TokenSource = str | Callable[[], str | None] | None


def token_subject(token: str | None) -> str | None:
    """The subject (`sub`) a token names, read without checking its signature (only the server
    can): what a worker or broker prefixes its id with (`<subject>/<name>`), as the server
    requires with auth on. None for no token, or one that does not read as a JWT."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and subject else None


def peer_id(name: str, subject: str | None) -> str:
    """The awareness id of a worker or broker called `name` on a connection whose token names
    `subject`: `<subject>/<name>` (with auth on the server accepts no other), `name` without a
    token."""
    if subject is None or name.rpartition("/")[0] == subject:
        return name
    return f"{subject}/{name}"


def http_base(url: str) -> str:
    """`ws://host:port` -> `http://host:port` (`wss` -> `https`): HTTP is on the same port."""
    return "http" + url.rstrip("/")[2:]


def board_url(url: str, board: str, token: str | None = None) -> str:
    """`ws://host:port` + board (+ token) -> the websocket URL of that board."""
    full = url.rstrip("/") + "/" + quote(board, safe="")
    if token:
        full += "?token=" + quote(token, safe="")
    return full


class BoardPeer:
    """Keeps `doc` in sync with one board on a kanbanmesh server.

    The `on_*` methods and `before_send` return a `Subscription`: cancel it to remove the
    listener again."""

    def __init__(
        self,
        url: str,
        board: str = c.DEFAULT_BOARD,
        *,
        token: TokenSource = None,
        max_message_bytes: int = 64 << 20,
        connect_timeout_s: float = 10.0,
        reconnect: bool = True,
        backoff_max_s: float = 5.0,
    ) -> None:
        """`token`: an access token, or a function returning the current one (see
        `TokenSource`). `reconnect=False`: a lost connection, or a refused write, stops the
        peer for good."""
        self.url = url
        self.board_name = board
        self.doc: Doc[Any] = Doc()
        self.board = BoardDoc(self.doc)
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(None)  # nobody until someone says who we are
        # How many times the replica was replaced by a new generation of the board.
        self.resets = 0
        self._reset_listeners: Listeners[[]] = Listeners()
        self._presence_listeners: Listeners[[]] = Listeners()
        self._stop_listeners: Listeners[[]] = Listeners()
        self.changed = ChangeSignal()
        self.presence_changed = ChangeSignal()
        self.error: KanbanMeshError | None = None
        # Counts updates received from the server: while it stands still, nobody else has
        # touched the document, so what a caller checked in it still holds.
        self.remote_updates = 0
        # When the server was last heard from (anyio clock): a peer may hold a lease only as
        # long as the server answers it.
        self.last_heard = 0.0
        # Between connecting and the server's sync step 1: local writes wait, so that they
        # cannot overtake the offline writes the answer to that step carries.
        self._handshaking = False
        self._token = token
        # The token of the last connection (a token source is asked again at each reconnect).
        self._current_token = token() if callable(token) else token
        # Refusals of our writes (REFUSAL_CLOSE_CODES): each starts a new replica.
        self.refusals = 0
        self.last_refusal: ConnectionClosedError | None = None
        self._refusal_listeners: Listeners[[ConnectionClosedError]] = Listeners()
        self._max_message_bytes = max_message_bytes
        self._connect_timeout_s = connect_timeout_s
        self._reconnect = reconnect
        self._backoff_max_s = backoff_max_s
        self._outbox: list[bytes] = []
        self._messages: list[bytes] = []  # ready-made messages for the writer (sync step 1)
        self._step2 = ChangeSignal()  # notified on each sync step 2 from the server
        # Durability requests in flight: token -> set once the server acknowledged it.
        self._durable: dict[int, anyio.Event] = {}
        self._durable_tokens = 0
        self._awareness_dirty = False
        self._wakeup = anyio.Event()
        self._applying_remote = False
        self._synced = anyio.Event()
        self._connected = False
        self._stopped = anyio.Event()
        self._tg: TaskGroup | None = None
        self._listeners: Listeners[[]] = Listeners()
        self._send_hooks: Listeners[[]] = Listeners()
        # Held to unobserve when the peer stops: Yrs keeps the callback, the callback this
        # peer, this peer the document, a cycle Python's collector cannot see, so a client
        # closed without it would keep its whole replica alive for good.
        self._doc_sub = self.doc.observe(self._on_doc_update)
        self.awareness.observe(self._on_awareness)

    # -- public surface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def on_remote_change(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` after each update received from the server."""
        return self._listeners.add(listener)

    def on_presence_change(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` after each change of the peers' awareness states."""
        return self._presence_listeners.add(listener)

    def before_send(self, hook: Callable[[], None]) -> Subscription:
        """Call `hook()` each time the writer wakes, before it takes what waits to be sent:
        the last moment to write into the document and have it go out in this message."""
        return self._send_hooks.add(hook)

    def flush_soon(self) -> None:
        """Wake the writer once the running task yields (it calls the `before_send` hooks)."""
        self._wakeup.set()

    def on_stop(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` when the peer stops for good with an `error` (refused, or the
        connection lost without reconnecting), as `changed` is notified."""
        return self._stop_listeners.add(listener)

    def on_refused(self, listener: Callable[[ConnectionClosedError], None]) -> Subscription:
        """Call `listener(error)` when the server refused a write of ours: the peer then has a
        new replica (`on_reset` listeners ran) and reconnects; writes made before are gone
        unless the server had them."""
        return self._refusal_listeners.add(listener)

    @property
    def current_token(self) -> str | None:
        """The token the peer connects with now (for HTTP requests beside the websocket)."""
        return self._current_token

    @property
    def subject(self) -> str | None:
        """The subject of the peer's token (None without one): see `token_subject`."""
        return token_subject(self._current_token)

    def on_reset(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` after the replica was replaced (the board moved to a new
        generation): `doc`, `board` and `awareness` are new objects from then on."""
        return self._reset_listeners.add(listener)

    def set_presence(self, state: dict[str, Any] | None) -> None:
        """Set this peer's awareness state (None: not present)."""
        self.awareness.set_local_state(state)

    def peers(self) -> dict[int, dict[str, Any]]:
        """Awareness states of the other peers on the board."""
        return {
            cid: state
            for cid, state in self.awareness.states.items()
            if cid != self.awareness.client_id and state
        }

    async def resync(self, timeout_s: float = 10.0) -> bool:
        """Ask the server for everything this replica lacks and wait until it has arrived
        (a sync step 1 answered by step 2). False when not connected or out of time."""
        if not self._connected:
            return False
        self._messages.append(codec.sync_step1(self.doc.get_state()))
        self._wakeup.set()
        with anyio.move_on_after(timeout_s):
            await self._step2.wait()
            return True
        return False

    async def durable(self, timeout_s: float = 10.0) -> None:
        """Return once every local change made before the call is on the server's disk.

        Raises `TransportError` if that is not confirmed within `timeout_s` (across
        reconnects: the request is repeated on each new connection), or the peer's error.
        """
        self._durable_tokens += 1
        token = self._durable_tokens
        resets = self.resets
        refusals = self.refusals
        acknowledged = self._durable[token] = anyio.Event()
        if self._connected:
            self._messages.append(codec.durable_message(token))
            self._wakeup.set()
        try:
            with anyio.move_on_after(timeout_s):
                while not acknowledged.is_set():
                    if self.error is not None:
                        raise self.error
                    if self.refusals != refusals and self.last_refusal is not None:
                        # Our change may have gone with the refused message: say so.
                        raise self.last_refusal
                    with anyio.move_on_after(0.5):
                        await acknowledged.wait()
            if not acknowledged.is_set():
                raise TransportError(f"the server did not confirm the write within {timeout_s:g} s")
            if self.refusals != refusals and self.last_refusal is not None:
                raise self.last_refusal
            if self.resets != resets:
                # The confirmation is the new generation's: our change was on the old replica.
                raise BoardRotatedError("the board moved to a new generation before the write was confirmed")
        finally:
            self._durable.pop(token, None)

    async def wait_synced(self, timeout_s: float | None = None) -> None:
        """Wait until the first sync with the server is complete."""
        with anyio.fail_after(timeout_s):
            while not self._synced.is_set():
                if self.error is not None:
                    raise self.error
                with anyio.move_on_after(0.5):
                    await self._synced.wait()
        if self.error is not None:
            raise self.error

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, sync, and keep the board in sync until `stop()`.

        Signals started after the first sync; raises `ConnectError` if the first connection
        cannot be made, and the server's refusal if it refuses us.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.awareness.start)
                await tg.start(self._run)
                task_status.started()
        finally:
            self.doc.unobserve(self._doc_sub)  # see __init__: or the replica stays alive

    async def stop(self) -> None:
        self._stopped.set()
        self._wakeup.set()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await tg.start(self.start)
        except BaseException:
            tg.cancel_scope.cancel()
            await stack.aclose()  # the error is raised as it is, not in an exception group
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.flush_presence_and_stop()
        await self._exit_stack.aclose()

    async def flush_presence_and_stop(self) -> None:
        """Tell peers we are leaving, then stop."""
        if self._connected and self.awareness.get_local_state() is not None:
            self.awareness.set_local_state(None)
            with anyio.move_on_after(0.5):
                while self._awareness_dirty or self._outbox:
                    await anyio.sleep(0.01)
        await self.stop()

    # -- document and awareness hooks -----------------------------------------------------

    def _on_doc_update(self, event: TransactionEvent) -> None:
        if self._applying_remote:
            return  # never echo the server's updates back to it
        self._outbox.append(event.update)
        self._wakeup.set()

    def _on_awareness(self, topic: str, changes: tuple[dict[str, Any], Any]) -> None:
        if topic == "update" and changes[1] == "local":
            self._awareness_dirty = True
            self._wakeup.set()
        elif topic == "change":
            self.presence_changed.notify()
            self._presence_listeners.notify()

    def _new_replica(self) -> None:
        """Drop the replica of an old generation of the board for an empty one; what it held
        comes back from the server's new generation at the next sync."""
        state = self.awareness.get_local_state()
        old_awareness = self.awareness
        self.doc.unobserve(self._doc_sub)
        self.doc = Doc()
        self.board = BoardDoc(self.doc)
        self.awareness = Awareness(self.doc)
        self.awareness.set_local_state(state)
        self._doc_sub = self.doc.observe(self._on_doc_update)
        self.awareness.observe(self._on_awareness)
        self._outbox.clear()
        self._synced = anyio.Event()
        self.resets += 1
        self.remote_updates += 1  # whatever callers checked is void
        if self._tg is not None:
            self._tg.start_soon(old_awareness.stop)
            self._tg.start_soon(self.awareness.start)
        self._reset_listeners.notify()
        self.changed.notify()
        self.presence_changed.notify()

    # -- connection loop ------------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        started = False
        delay = 0.05
        first = True
        while not self._stopped.is_set():
            if callable(self._token) and not first:
                self._current_token = self._token()
            first = False
            full_url = board_url(self.url, self.board_name, self._current_token)
            try:
                ws = await connect(
                    full_url,
                    max_size=self._max_message_bytes,
                    open_timeout=self._connect_timeout_s,
                    ping_interval=20,
                    ping_timeout=20,
                    compression=None,
                )
            except InvalidStatus as exc:
                error = ConnectError(
                    f"server refused the connection to {full_url.split('?')[0]}: "
                    f"HTTP {exc.response.status_code} {exc.response.body.decode(errors='replace').strip()}"
                )
                if not started:
                    self.error = error
                    raise error from exc
                renewable = exc.response.status_code == 401 and callable(self._token)
                if exc.response.status_code in (401, 403, 404) and not renewable:
                    self._fail(error)
                    return
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                if not started:
                    self.error = ConnectError(f"cannot connect to {self.url}: {exc}")
                    raise self.error from exc
                log.info("reconnect to %s failed: %s", self.url, exc)
            else:
                try:
                    await self._session(ws, None if started else task_status)
                    delay = 0.05
                except _Rotated:
                    if not self._reconnect:
                        self._fail(ConnectionClosedError(
                            "the board moved to a new generation", code=c.CLOSE_BOARD_ROTATED
                        ))
                        return
                    log.info("board %s rotated: starting a new replica", self.board_name)
                    started = started or self._synced.is_set()
                    self._new_replica()
                    continue  # at once: the server is there
                except _Refused as refused:
                    if not (started or self._synced.is_set()):
                        self.error = refused.error
                        raise refused.error from None
                    if not self._reconnect:
                        self._fail(refused.error)
                        return
                    started = True
                    self._refused(refused.error)
                    # Not at once: a peer whose every write is refused must not spin.
                except _Fatal as fatal:
                    if fatal.renew and callable(self._token) and (started or self._synced.is_set()):
                        log.info("board %s: token expired; reconnecting with a fresh one", self.board_name)
                        started = True
                        continue
                    if not (started or self._synced.is_set()):
                        self.error = fatal.error
                        raise fatal.error from None
                    self._fail(fatal.error)
                    return
                else:
                    started = started or self._synced.is_set()
            if not self._reconnect:
                self.error = ConnectionClosedError("connection to the server was lost")
                self._stopped_for_good()
                return
            await anyio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._backoff_max_s)

    def _refused(self, error: ConnectionClosedError) -> None:
        """The server refused a write of ours and closed the connection: the write is in our
        replica, which would send it again at the next sync. Start a new replica instead (what
        the server has comes back at the next sync; what it refused, and local writes sent
        with it, are gone) and tell whoever listens."""
        log.warning("board %s: the server refused a write: %s", self.board_name, error)
        self.refusals += 1
        self.last_refusal = error
        self._new_replica()
        self._refusal_listeners.notify(error)

    def _fail(self, error: KanbanMeshError) -> None:
        """Stop for good with `error`, waking everyone who waits on the peer."""
        self.error = error
        self._synced.set()
        self.presence_changed.notify()
        self._stopped_for_good()

    def _stopped_for_good(self) -> None:
        self.changed.notify()
        self._stop_listeners.notify()

    async def _session(self, ws: ClientConnection, task_status: TaskStatus[None] | None) -> None:
        self._connected = True
        self._handshaking = True
        self._outbox.clear()  # the sync steps below carry everything the server lacks
        self._messages.clear()
        try:
            await ws.send(codec.sync_step1(self.doc.get_state()))
            if self.awareness.get_local_state() is not None:
                self._awareness_dirty = True
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer, ws)
                    try:
                        await self._reader(ws, task_status)
                    finally:
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                fatal = group.subgroup(lambda e: isinstance(e, _Fatal | _Rotated | _Refused))
                if fatal is None:
                    raise
                while isinstance(fatal, BaseExceptionGroup):
                    fatal = fatal.exceptions[0]
                raise fatal from None
        finally:
            self._connected = False
            stale = [cid for cid in self.awareness.states if cid != self.awareness.client_id]
            if stale:
                self.awareness.remove_awareness_states(stale, "connection-lost")
            with anyio.CancelScope(shield=True):
                await ws.close()

    async def _reader(self, ws: ClientConnection, task_status: TaskStatus[None] | None) -> None:
        try:
            async for data in ws:
                if isinstance(data, str):
                    raise _Fatal(ProtocolError("server sent a text frame"))
                self._handle(ws, bytes(data), task_status)
                if task_status is not None and self._synced.is_set():
                    task_status.started()
                    task_status = None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            if code == c.CLOSE_BOARD_ROTATED:
                raise _Rotated() from None
            message = f"the server closed the connection: {reason or code}"
            if code in c.REFUSAL_CLOSE_CODES:
                cls = MessageTooLargeError if code == c.CLOSE_MESSAGE_TOO_BIG else UpdateRefusedError
                raise _Refused(cls(message, code=code, reason=reason)) from None
            if code == c.CLOSE_TOKEN_EXPIRED:
                raise _Fatal(ConnectionClosedError(message, code=code, reason=reason), renew=True) from None
            if code in c.FATAL_CLOSE_CODES:
                raise _Fatal(UpdateRefusedError(message, code=code, reason=reason)) from None
        except ProtocolError as exc:
            raise _Fatal(exc) from None

    def _handle(self, ws: ClientConnection, data: bytes, task_status: TaskStatus[None] | None) -> None:
        message = codec.parse_message(data)
        self.last_heard = anyio.current_time()
        if isinstance(message, codec.SyncMessage):
            if message.step is codec.SyncStep.STEP1:
                self._outbox.clear()
                self._outbox.append(self.doc.get_update(message.payload))
                # Durability requests a lost connection left unanswered go again, after the
                # updates this answer carries (the writer sends the outbox first).
                self._messages.extend(codec.durable_message(token) for token in self._durable)
                self._handshaking = False
                self._wakeup.set()
            else:
                self._apply_remote(message.payload)
                if message.step is codec.SyncStep.STEP2:
                    self._synced.set()
                    self._step2.notify()
        elif isinstance(message, codec.AwarenessMessage):
            self.awareness.apply_awareness_update(message.update, "remote")
        elif isinstance(message, codec.DurableMessage):
            event = self._durable.get(message.token)
            if event is not None:
                event.set()

    def _apply_remote(self, update: bytes) -> None:
        if update == codec.EMPTY_UPDATE:
            return
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise ProtocolError(f"server sent an update that does not decode: {exc}") from exc
        finally:
            self._applying_remote = False
        self.remote_updates += 1
        self.changed.notify()
        self._listeners.notify()

    async def _writer(self, ws: ClientConnection) -> None:
        try:
            await self._write_loop(ws)
        except ConnectionClosed:
            return  # the reader sees the close and decides what it means

    async def _write_loop(self, ws: ClientConnection) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            self._send_hooks.notify()
            if self._handshaking:
                continue  # the answer to the server's step 1 goes first (see _handle)
            if self._outbox:
                updates, self._outbox = self._outbox, []
                update = updates[0] if len(updates) == 1 else merge_updates(*updates)
                await ws.send(codec.sync_update(update))
            # After the updates: a durability request covers what was sent before it.
            if self._messages:
                messages, self._messages = self._messages, []
                for message in messages:
                    await ws.send(message)
            if self._awareness_dirty:
                self._awareness_dirty = False
                await ws.send(
                    codec.awareness_message(
                        self.awareness.encode_awareness_update([self.awareness.client_id])
                    )
                )


class _Rotated(Exception):
    """The server closed with 4409: reconnect with a new replica."""


class _Fatal(Exception):
    def __init__(self, error: KanbanMeshError, *, renew: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.renew = renew  # a fresh token would do (4401)


class _Refused(Exception):
    """The server refused a write of ours (REFUSAL_CLOSE_CODES)."""

    def __init__(self, error: ConnectionClosedError) -> None:
        super().__init__(str(error))
        self.error = error
