"""The y-websocket codecs: round trips, and garbage raising ProtocolError."""

from __future__ import annotations

import os

import pytest
from pycrdt import Awareness, Doc, Map

from kanbanmesh.errors import ProtocolError
from kanbanmesh.protocol import codec


def test_sync_messages_round_trip() -> None:
    doc = Doc()
    doc.get("todo", type=Map)["x"] = 1
    update = doc.get_update()
    for build, step in [(codec.sync_step1, codec.SyncStep.STEP1), (codec.sync_step2, codec.SyncStep.STEP2),
                        (codec.sync_update, codec.SyncStep.UPDATE)]:
        message = codec.parse_message(build(update))
        assert message == codec.SyncMessage(step, update)


def test_awareness_codec_matches_pycrdt() -> None:
    awareness = Awareness(Doc())
    awareness.set_local_state({"role": "worker", "id": "w1", "slots": 2})
    raw = awareness.encode_awareness_update([awareness.client_id])
    [entry] = codec.decode_awareness(raw)
    assert entry.client_id == awareness.client_id and entry.state == {"role": "worker", "id": "w1", "slots": 2}
    again = Awareness(Doc())
    again.apply_awareness_update(codec.encode_awareness([entry]), "test")
    assert again.states[awareness.client_id] == entry.state


def test_state_vector() -> None:
    doc = Doc()
    doc.get("todo", type=Map)["x"] = 1
    vector = codec.decode_state_vector(doc.get_state())
    assert vector == {doc.client_id: 1}


def test_state_vectors_of_many_writers_decode_as_yrs_encodes_them() -> None:
    doc = Doc()
    expected = {}
    for n in range(40):  # 40 writers, clocks from 1 to 40, client ids up to 2**53
        writer = Doc()
        column = writer.get("todo", type=Map)
        for i in range(n + 1):
            column[f"k{i}"] = i
        doc.apply_update(writer.get_update())
        expected[writer.client_id] = n + 1
    assert codec.decode_state_vector(doc.get_state()) == expected
    assert codec.decode_state_vector(Doc().get_state()) == {}


@pytest.mark.parametrize("data", [b"", b"\x02\x01\x02\x03", b"\x01\x80", b"\x01" + b"\xff" * 9 + b"\x01\x01"])
def test_malformed_state_vectors_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.decode_state_vector(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x07", b"\x00\x05\x01", b"\x00\x02\x10abc", b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff",
     codec.sync_update(b"abc") + b"trailing"],
)
def test_malformed_messages_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_message(data)


def test_random_bytes_never_escape_as_other_errors() -> None:
    for _ in range(2000):
        data = os.urandom(int.from_bytes(os.urandom(1), "big") % 40)
        try:
            message = codec.parse_message(data)
        except ProtocolError:
            continue
        if isinstance(message, codec.AwarenessMessage):
            try:
                codec.decode_awareness(message.update)
            except ProtocolError:
                pass


def test_awareness_state_must_be_json_object() -> None:
    bad = codec.var_uint(1) + codec.var_uint(5) + codec.var_uint(1) + codec.var_bytes(b"[1,2]")
    with pytest.raises(ProtocolError, match="object"):
        codec.decode_awareness(bad)
