"""Presence in a room: peers' awareness states as the room applies, sends and expires them, and
what they tell the fan-out about each peer.

What a peer announces decides how it is served: a broker gets every update at once; a
connection that announced only workers gets other tasks' news with the longer worker delay,
and, announcing a worker (back after a reconnect or a server restart), follows the tasks that
worker already holds. What a token may announce is `ANNOUNCEABLE`
(`kanbanmesh/board/roles.py`), checked by `admit_announcement`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from awareness.registry import AwarenessConflictError, AwarenessRegistry
from kanbanmesh.auth import OPEN_ACCESS, Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import ANNOUNCEABLE, PeerRole
from kanbanmesh.protocol import codec
from kanbanmesh.server.connection import Connection
from kanbanmesh.server.fanout import FanOut
from kanbanmesh.server.room_settings import RoomSettings

# Peers that act on any task get every update at once; others only their own tasks'. Also a
# peer announcing role "admin": no `PeerRole`, and no peer of the mesh announces it, but an admin
# token (or anybody on an open server) may announce anything, and such a tool was served so.
_EAGER_ROLES = frozenset({PeerRole.BROKER.value, "admin"})
_WORKERS_ONLY = frozenset({PeerRole.WORKER.value})


class Presence:
    """The awareness states of one room's peers (`registry`), bound to their connections."""

    def __init__(
        self, settings: RoomSettings, fanout: FanOut, held_by: Callable[[frozenset[str]], set[str]],
    ) -> None:
        """`held_by(worker_ids)`: the tasks the board has assigned to one of `worker_ids`."""
        self.registry = AwarenessRegistry()
        self._settings = settings
        self._fanout = fanout
        self._held_by = held_by

    def apply(self, conn: Connection, update: bytes) -> None:
        """Apply a peer's awareness update and forward what it changed to everybody (the
        sender too: y-websocket counts it as a sign of life). Raises `ProtocolError` and
        `AwarenessConflictError` (see `AwarenessRegistry.apply`)."""
        identity = conn.identity
        forward = self.registry.apply(
            conn, update,
            subject=None if identity is OPEN_ACCESS else identity.subject,
            admit=partial(admit_announcement, identity),
        )
        roles, worker_ids = self.registry.roles_of(conn)
        only_workers = bool(worker_ids) and roles <= _WORKERS_ONLY
        new_workers = conn.announced(
            worker_ids, eager=not roles.isdisjoint(_EAGER_ROLES),
            lazy_s=self._settings.worker_lazy_s if only_workers else self._settings.lazy_s,
        )
        if new_workers:
            # A worker (back, after a reconnect or a server restart) follows the tasks it
            # already holds: their requeue must reach it at once, or it runs on a stale
            # attempt whose writes the worker fence refuses.
            conn.follow(self._held_by(new_workers))
        if forward is not None:
            self._fanout.broadcast(codec.awareness_message(forward))

    def welcome(self, conn: Connection) -> None:
        """Send `conn` every present state (on join, and when it asks)."""
        full = self.registry.full_update()
        if full is not None:
            conn.enqueue_message(codec.awareness_message(full))

    def leave(self, conn: Connection) -> None:
        """Remove the states of a closed connection at once, and tell everybody."""
        removal = self.registry.remove_owner(conn)
        if removal is not None:
            self._fanout.broadcast(codec.awareness_message(removal))

    def expire(self) -> None:
        """Remove the states not renewed within the timeout, and tell everybody."""
        removal = self.registry.expire(self._settings.awareness_timeout_s)
        if removal is not None:
            self._fanout.broadcast(codec.awareness_message(removal))

    def publish(self, owner: object, client_id: int, state: dict[str, object] | None) -> None:
        """Set an awareness state owned by the server process (the embedded broker)."""
        update = self.registry.set_local(owner, client_id, state)
        self._fanout.broadcast(codec.awareness_message(update))


def admit_announcement(identity: Identity, entry: codec.AwarenessEntry) -> None:
    """Refuse a state this connection's token may not announce (`AwarenessConflictError`,
    closed with 1008): a client may not pose as a worker or a broker (nor a worker as a
    broker), and with auth on the id of a worker or a broker is bound to the token's subject:
    `<subject>/<name>`, so that no token can act as another subject's worker."""
    allowed = ANNOUNCEABLE.get(identity.role)
    if allowed is None:
        return  # admin (or an open server, where everybody is)
    state = entry.state or {}
    role = state.get(c.A_ROLE)
    if role not in allowed:
        raise AwarenessConflictError(f"a {identity.role.value} may not announce role {role!r}")
    if role in (PeerRole.WORKER, PeerRole.BROKER):
        peer_id = state.get(c.A_ID)
        if not isinstance(peer_id, str) or peer_id.rpartition("/")[0] != identity.subject:
            raise AwarenessConflictError(
                f"forbidden: a {role} id must be '{identity.subject[:40]}/<name>', not {str(peer_id)[:40]!r}"
            )
