"""Roles are wire values: token claims, awareness states and docs/protocol.md name them."""

from __future__ import annotations

from kanbanmesh.board.roles import ANNOUNCEABLE, PeerRole, TokenRole


def test_role_values_are_the_documented_wire_strings() -> None:
    assert [role.value for role in TokenRole] == ["client", "worker", "broker", "admin", "metrics"]
    assert [role.value for role in PeerRole] == ["client", "broker", "worker"]


def test_a_token_announces_at_most_the_peer_of_its_own_name() -> None:
    for token_role, peers in ANNOUNCEABLE.items():
        assert None in peers  # a stock client's first state, `{}`, announces no role
        assert {peer.value for peer in peers if peer is not None} <= {token_role.value}
    assert TokenRole.ADMIN not in ANNOUNCEABLE  # an admin may announce anything
    assert ANNOUNCEABLE[TokenRole.METRICS] == frozenset({None})
