"""Ingress: one peer's message to a room, checked, then applied.

A sync step 1 is answered with what the peer's replica lacks (refused with 4409 when the
replica is of an earlier generation). An update is checked on the twin (`UpdateValidator`:
the schema and entry limits) against the peer's write rules (`kanbanmesh.server.authz`: its
token's, or without auth the worker fence) and, for a client token, its owner's quota; only
then is it applied to the board, and the room's change listeners run. Awareness goes to
`Presence`. A durability request is handed back, to be acknowledged once the store commits.
Anything refused raises, and the session closes the connection with the matching code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import anyio

from kanbanmesh.auth import Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.errors import ProtocolError
from kanbanmesh.protocol import codec
from kanbanmesh.server.authz import WriteRules
from kanbanmesh.server.connection import Connection
from kanbanmesh.server.fanout import FanOut
from kanbanmesh.server.lifecycle import RoomDocument
from kanbanmesh.server.presence import Presence
from kanbanmesh.server.validation import UpdateChanges, UpdateRefused


class Ingress:
    """Handles the messages of one room's connections.

    `after_write(created)` runs after each update is applied (`created`: the tasks it created):
    the room admits new tasks to its pipeline and runs its change listeners there.
    """

    def __init__(
        self, document: RoomDocument, fanout: FanOut, presence: Presence,
        after_write: Callable[[Iterable[str]], None],
    ) -> None:
        self._document = document
        self._fanout = fanout
        self._presence = presence
        self._after_write = after_write

    def token_rules(self, conn: Connection) -> WriteRules:
        """The write rules of a connection with a token (`conn.identity`)."""
        return self._rules(conn, conn.identity, self._document.writers)

    def _worker_fence(self, conn: Connection) -> WriteRules:
        identity = Identity(subject=f"worker-connection-{id(conn)}", role=TokenRole.WORKER,
                            boards=[self._document.name])
        # Its own binding table: without tokens there is no subject to bind client ids to.
        return self._rules(conn, identity, {})

    def _rules(self, conn: Connection, identity: Identity, writers: dict[int, str]) -> WriteRules:
        document = self._document
        announced = partial(self._presence.registry.announced_by, conn)
        return WriteRules(identity, lambda: document.board, announced, writers)

    def handle(self, conn: Connection, data: bytes) -> int | None:
        """Handle one message, with urgent sends to direct channels held until it is over (see
        `FanOut.message_begins`); returns the token of a durability request to acknowledge."""
        self._fanout.message_begins()
        try:
            return self._handle(conn, data)
        finally:
            self._fanout.message_ends()

    def _handle(self, conn: Connection, data: bytes) -> int | None:
        message = codec.parse_message(data)
        if isinstance(message, codec.SyncMessage):
            if message.step is codec.SyncStep.STEP1:
                self._answer_step1(conn, message.payload)
            else:
                self._apply(conn, message.payload)
        elif isinstance(message, codec.AwarenessMessage):
            self._presence.apply(conn, message.update)
        elif isinstance(message, codec.DurableMessage):
            return message.token
        else:
            self._presence.welcome(conn)
        return None

    def _answer_step1(self, conn: Connection, state_vector: bytes) -> None:
        document = self._document
        if document.retired and not document.retired.isdisjoint(codec.decode_state_vector(state_vector)):
            raise UpdateRefused(
                c.CLOSE_BOARD_ROTATED,
                f"your replica is of an old generation of this board (now "
                f"{document.generation}): reconnect with a new Y.Doc",
            )
        try:
            reply = document.doc.get_update(state_vector)
        except ValueError as exc:
            raise ProtocolError(f"state vector does not decode: {exc}") from exc
        conn.enqueue_message(codec.sync_step2(reply))

    def _apply(self, conn: Connection, update: bytes) -> None:
        if update == codec.EMPTY_UPDATE:
            return
        document = self._document
        if conn.epoch != document.epoch:
            raise UpdateRefused(c.CLOSE_BOARD_ROTATED, "the board moved to a new generation: "
                                "reconnect with a new Y.Doc")
        validator = document.validator
        if validator is not None:
            rules = conn.write_rules(self._worker_fence)
            # Limits are per owner, and an owner is only somebody when a token says so.
            limited = conn.identity.role is TokenRole.CLIENT

            def authorize(changes: UpdateChanges) -> None:
                if rules is not None:
                    rules(changes)
                if limited:
                    document.quota.admit(changes, anyio.current_time())

            validator.check(update, authorize)
            self._fanout.note_all_touched(validator.touched)
            conn.follow(validator.created)
            if self._fanout.first_in_turn and conn.worker_ids and not conn.eager:
                changes = validator.changes
                news = validator.touched.union(
                    (key for _, key in changes.written), (key for _, key in changes.removed)
                )
                self._fanout.forward_early(conn, update, news)
        self._fanout.apply_begins(conn)
        try:
            document.doc.apply_update(update)
        except BaseException as exc:
            if validator is not None:
                validator.reset()  # it took what the board did not
            if isinstance(exc, Exception):
                raise UpdateRefused(
                    c.CLOSE_INVALID_UPDATE, f"update could not be applied ({type(exc).__name__})"
                ) from exc
            raise
        finally:
            self._fanout.apply_ends()
        self._after_write(validator.created if validator is not None else ())
