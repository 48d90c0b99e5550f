"""Which of several brokers on one board leads: the oldest one present, by awareness.

Every broker announces `since` (when it started) in its awareness state. The broker with the
smallest `(since, id)` among those present leads; the others stand by and take over the moment
the leader's state disappears (its connection closed: the server removes its state at once).
A broker that restarts comes back with a new `since`, behind the ones that stayed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import PeerRole


def leader_id(own_id: str, own_since: float, states: Iterable[dict[str, Any]]) -> str:
    """The id of the leading broker among `states` and this one."""
    candidates = [(own_since, own_id)]
    for state in states:
        if state.get(c.A_ROLE) != PeerRole.BROKER.value or not isinstance(state.get(c.A_ID), str):
            continue
        since = state.get(c.A_SINCE)
        # A broker that does not say when it started never outranks one that does.
        candidates.append((float(since) if isinstance(since, int | float) else math.inf, state[c.A_ID]))
    return min(candidates)[1]
