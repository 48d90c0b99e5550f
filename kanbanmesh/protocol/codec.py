"""Codecs of the y-websocket wire protocol: bytes in, values out, no I/O.

Every decoder checks bounds and raises `ProtocolError` on bytes that are not a well-formed
message, so that garbage from a peer becomes a clear refusal instead of an exception deep in
the server.

Message layout (lib0 encoding, as y-protocols writes it)::

    message   = varUint(type) payload
    SYNC      = varUint(0) varUint(step) varUint8Array(data)   step: 0 state vector, 1 update, 2 update
    AWARENESS = varUint(1) varUint8Array(update)
    DURABLE   = varUint(100) varUint(token)   kanbanmesh's extension, see `MessageType.DURABLE`
    awareness update = varUint(n) { varUint(clientID) varUint(clock) varString(JSON state) }*n
    state vector     = varUint(n) { varUint(clientID) varUint(clock) }*n
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from kanbanmesh.errors import ProtocolError

# JavaScript numbers are doubles: a client id or clock beyond 2**53 cannot come from Yjs.
_MAX_VAR_UINT_BYTES = 8


class MessageType(IntEnum):
    """Top-level y-websocket message types."""

    SYNC = 0  # document sync (steps 1 and 2) and incremental updates
    AWARENESS = 1  # presence states
    AUTH = 2  # y-websocket's permission-denied message (server to client)
    QUERY_AWARENESS = 3  # "send me everyone's awareness"
    # kanbanmesh's extension: a client asks, the server answers with the same token once every
    # update it received on that connection before the request is on disk. Stock clients
    # never send it, so they never receive one.
    DURABLE = 100


class SyncStep(IntEnum):
    """Sub-types of a SYNC message."""

    STEP1 = 0  # payload: the sender's state vector
    STEP2 = 1  # payload: the update the receiver lacks
    UPDATE = 2  # payload: an incremental update


@dataclass(frozen=True)
class SyncMessage:
    step: SyncStep
    payload: bytes


@dataclass(frozen=True)
class AwarenessMessage:
    update: bytes


@dataclass(frozen=True)
class QueryAwarenessMessage:
    pass


@dataclass(frozen=True)
class DurableMessage:
    token: int


Message = SyncMessage | AwarenessMessage | QueryAwarenessMessage | DurableMessage


@dataclass(frozen=True)
class AwarenessEntry:
    """One client's awareness state; `state` None means the client left."""

    client_id: int
    clock: int
    state: dict[str, Any] | None


class Reader:
    """A bounds-checked lib0 decoder."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def var_uint(self) -> int:
        data, pos = self.data, self.pos
        # Most numbers of the protocol (message kinds, lengths, counts) fit in one byte.
        if pos < len(data) and data[pos] < 0x80:
            self.pos = pos + 1
            return data[pos]
        value = 0
        shift = 0
        for _ in range(_MAX_VAR_UINT_BYTES):
            if pos >= len(data):
                raise ProtocolError("message ends inside a number")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7
        raise ProtocolError("number too long")

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        end = self.pos + length
        if end > len(self.data):
            raise ProtocolError(f"message announces {length} bytes but has {len(self.data) - self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not UTF-8") from exc


def var_uint(num: int) -> bytes:
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


def var_bytes(data: bytes) -> bytes:
    return var_uint(len(data)) + data


def parse_message(data: bytes) -> Message:
    """Decode one websocket message; raises `ProtocolError` for anything malformed."""
    reader = Reader(data)
    kind = reader.var_uint()
    message: Message
    if kind == MessageType.SYNC:
        step = reader.var_uint()
        if step not in (0, 1, 2):
            raise ProtocolError(f"unknown sync step {step}")
        message = SyncMessage(SyncStep(step), reader.var_bytes())
    elif kind == MessageType.AWARENESS:
        message = AwarenessMessage(reader.var_bytes())
    elif kind == MessageType.QUERY_AWARENESS:
        message = QueryAwarenessMessage()
    elif kind == MessageType.DURABLE:
        message = DurableMessage(reader.var_uint())
    else:
        raise ProtocolError(f"unknown message type {kind}")
    if not reader.done():
        raise ProtocolError("trailing bytes after the message")
    return message


def sync_step1(state_vector: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncStep.STEP1)) + var_bytes(state_vector)


def sync_step2(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncStep.STEP2)) + var_bytes(update)


def sync_update(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncStep.UPDATE)) + var_bytes(update)


def awareness_message(update: bytes) -> bytes:
    return bytes((MessageType.AWARENESS,)) + var_bytes(update)


def query_awareness_message() -> bytes:
    return bytes((MessageType.QUERY_AWARENESS,))


def durable_message(token: int) -> bytes:
    return var_uint(MessageType.DURABLE) + var_uint(token)


# An update with no structs and no deletions: Yjs applies it as a no-op. Sent as a keepalive,
# because y-websocket reconnects when it has received no *message* for 30 s (pings don't count).
EMPTY_UPDATE = b"\x00\x00"
KEEPALIVE = sync_update(EMPTY_UPDATE)


def decode_awareness(update: bytes) -> list[AwarenessEntry]:
    reader = Reader(update)
    count = reader.var_uint()
    entries = []
    for _ in range(count):
        client_id = reader.var_uint()
        clock = reader.var_uint()
        raw = reader.var_string()
        try:
            state = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError("awareness state is not JSON") from exc
        if state is not None and not isinstance(state, dict):
            raise ProtocolError("awareness state is not a JSON object")
        entries.append(AwarenessEntry(client_id, clock, state))
    if not reader.done():
        raise ProtocolError("trailing bytes after the awareness update")
    return entries


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    out = [var_uint(len(entries))]
    for entry in entries:
        out.append(var_uint(entry.client_id))
        out.append(var_uint(entry.clock))
        text = json.dumps(entry.state, separators=(",", ":"))
        out.append(var_bytes(text.encode("utf-8")))
    return b"".join(out)


def delete_set(update: bytes) -> list[tuple[int, int, int]] | None:
    """The delete set of a Yjs (v1) update that adds no structs, as `[(client, clock, length),
    ...]`; None when the update adds structs (its delete set then lies behind them, and reading
    it would mean decoding every struct: `pycrdt.get_update(update, state)` cuts them off).

    Layout: `varUint(0)` (no client blocks), then the delete set: `varUint(clients) { varUint(client)
    varUint(ranges) { varUint(clock) varUint(length) }* }*`."""
    reader = Reader(update)
    if reader.var_uint():
        return None
    deleted = []
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        for _ in range(reader.var_uint()):
            clock = reader.var_uint()
            deleted.append((client, clock, reader.var_uint()))
    if not reader.done():
        raise ProtocolError("trailing bytes after the delete set")
    return deleted


def deleting_all_of(state: dict[int, int]) -> bytes:
    """A struct-free update whose delete set is every clock of `state`: `[0, clock)` of each
    client. Merged with another delete set (`pycrdt.merge_updates`, which unites and squashes
    ranges), it swallows every range of that set that lies within `state`."""
    out = [b"\x00", var_uint(len(state))]
    for client, clock in state.items():
        out += (var_uint(client), b"\x01\x00", var_uint(clock))
    return b"".join(out)


def decode_state_vector(data: bytes) -> dict[int, int]:
    """`varUint(n) { varUint(client) varUint(clock) }*n` as `{client: clock}` (bytes after
    the last pair are ignored, as Yjs does)."""
    # Decoded twice for every update the server checks, with an entry per client the board
    # ever had: one pass over the bytes, instead of two `Reader.var_uint` calls per entry.
    numbers: list[int] = []
    value = shift = 0
    limit = 7 * (_MAX_VAR_UINT_BYTES - 1)
    for byte in data:
        if byte < 0x80:
            numbers.append(value | (byte << shift))
            value = shift = 0
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift > limit:
                raise ProtocolError("number too long")
    if not numbers:
        raise ProtocolError("message ends inside a number")
    count = numbers[0]
    if len(numbers) < 1 + 2 * count:
        raise ProtocolError("message ends inside a number")
    return dict(zip(numbers[1 : 1 + 2 * count : 2], numbers[2 : 2 + 2 * count : 2], strict=True))
