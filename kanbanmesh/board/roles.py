"""Roles, in one place: what a token grants, and what a peer is.

Two vocabularies, named apart because they differ:

- `TokenRole`: what a credential lets its holder do (the `role` claim of an access token; the
  server decides per role what a connection may write, `kanbanmesh/server/authz.py`). `admin`
  and `metrics` exist only here: they are rights, not kinds of peer.
- `PeerRole`: what a peer is in the mesh, as it announces itself (the `role` field of its
  awareness state) and as the writer of a transition (the table in `transitions.py`).

A token may announce only its own kind of peer (`ANNOUNCEABLE`). The values are wire strings
(JWT claims, awareness states, docs/protocol.md): renaming one breaks every client.
"""

from __future__ import annotations

from enum import Enum


class TokenRole(str, Enum):
    """What a token lets its holder do (docs/protocol.md section 10)."""

    CLIENT = "client"  # submit tasks, cancel and acknowledge its own
    WORKER = "worker"  # run the tasks assigned to its worker ids
    BROKER = "broker"  # assign and repair
    ADMIN = "admin"  # anything the schema allows
    METRICS = "metrics"  # read `/metrics` (a Prometheus scraper), nothing else


class PeerRole(str, Enum):
    """What a peer is: the `role` of its awareness state, and who writes a transition."""

    CLIENT = "client"  # submits and watches tasks
    BROKER = "broker"  # assigns and repairs
    WORKER = "worker"  # runs tasks assigned to it


# The peer roles each token role may announce (None: no role at all, as a stock client's first
# state, `{}`, announces none). A token role missing here (admin) may announce anything.
ANNOUNCEABLE: dict[TokenRole, frozenset[PeerRole | None]] = {
    TokenRole.CLIENT: frozenset({None, PeerRole.CLIENT}),
    TokenRole.WORKER: frozenset({None, PeerRole.WORKER}),
    TokenRole.BROKER: frozenset({None, PeerRole.BROKER}),
    TokenRole.METRICS: frozenset({None}),
}
