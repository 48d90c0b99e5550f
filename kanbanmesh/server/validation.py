"""Checking an incoming update before it reaches the board.

The update is first applied to a twin of the board document; `observe_deep` on the twin's four
root maps tells exactly what it touched (a new entry, a field of an entry, a deletion, a text
append). Only if the check passes is the same update applied to the board. A refused update
leaves the twin ahead of the board, so the twin is rebuilt from the board.

An update that leaves anything pending on the twin is refused (`_refuse_pending`): Yrs would
keep it and integrate it later, inside another writer's update, where this check would blame
or pass the wrong writer. It is read off what Yrs itself did: `get_update(update, twin state)`
is what of the update did not integrate (structs: pending) plus its delete set, each range of
which must lie within the twin's state. Preferred to a complete Yjs update reader in Python
(every struct and content type decoded to learn its length and origins): that costs Python time
per struct on every update, and would be a second decoder to keep in step with Yrs, whose own
reading is what counts (a delete set naming a client twice: Yrs keeps the last).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map, Subscription, get_update, merge_updates

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import entry_from_fields
from kanbanmesh.board.events import event_keys, event_path, is_map_event, observe_events
from kanbanmesh.board.limits import JSON_BYTES_PER_UPDATE_BYTE, EntryLimits, check_fields
from kanbanmesh.board.reads import (
    NotAMap,
    Unreadable,
    output_length,
    read_entry,
    root_count,
    shared_fields,
)
from kanbanmesh.errors import InvalidTaskError, ProtocolError, TaskTooLargeError
from kanbanmesh.protocol.codec import EMPTY_UPDATE, decode_state_vector, delete_set, deleting_all_of

_ABSENT = object()  # a key a map does not hold (None is a value a map may hold)


class UpdateRefused(Exception):
    """An incoming update breaks a rule; `code` is the websocket close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _NewEntry:
    column: str
    key: str
    value: Any
    # Whether the request's and the entry's JSON must be measured against their limits (see
    # `_inspect`).
    measure_request: bool = True
    measure_entry: bool = True


@dataclass
class UpdateChanges:
    """What one incoming update does to the board, as the twin saw it."""

    written: dict[tuple[str, str], Any] = field(default_factory=dict)  # entries, as plain values
    removed: set[tuple[str, str]] = field(default_factory=set)
    fields: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # inside entries
    texts: set[tuple[str, str]] = field(default_factory=set)  # output appends
    nested: set[tuple[str, str]] = field(default_factory=set)  # changes inside other shared types
    control: set[str] = field(default_factory=set)  # keys of the `control` map
    meta: bool = False  # the `meta` map (the server's own)
    unknown_roots: set[str] = field(default_factory=set)
    writers: set[int] = field(default_factory=set)  # Yjs client ids whose structs it added


# Root types a board may hold; anything else is refused (it would cost every client forever).
KNOWN_ROOTS = frozenset({*c.COLUMNS, c.CONTROL, c.META})


# Above this many bytes, a delete set is folded into the board's state before it is read.
_DELETE_SET_READ_BYTES = 128


def _refuse_pending(update: bytes, state: bytes, after: dict[int, int]) -> None:
    """Refuse an update that leaves anything pending on the twin (docs/protocol.md section
    10): structs whose origin, neighbour, parent or preceding clocks the board does not have,
    or deletions of what it does not have. Yrs keeps those and integrates them later, inside
    somebody else's update, where the check would take them for that writer's.

    `state` is the twin's state vector after applying the update (`after`, decoded). A state
    vector counts the clocks a document holds, each client's from 0 without a gap, so a struct
    the twin did not integrate lies at or beyond its client's state: `get_update(update,
    state)` (Yrs' own decoder, slicing partly covered structs) keeps exactly those. Struct-free,
    what is left of it is the update's delete set, each range of which must lie below the
    twin's state of its client (Yrs keeps a deletion beyond it pending)."""
    try:
        rest = update if update == EMPTY_UPDATE else get_update(update, state)
        if rest[:1] != b"\x00":  # client blocks left: structs that did not integrate
            raise UpdateRefused(c.CLOSE_INVALID_UPDATE, "update depends on changes the board does not have")
        if len(rest) > _DELETE_SET_READ_BYTES:
            # A long delete set (a peer's whole history, in a sync step 2): let Yrs fold it
            # into "everything the board has" first, leaving one range per client to read.
            rest = merge_updates(rest, deleting_all_of(after))
        deleted = delete_set(rest)
    except (ValueError, RuntimeError, ProtocolError) as exc:
        raise UpdateRefused(c.CLOSE_INVALID_UPDATE, f"update does not decode: {exc}") from exc
    for client, clock, length in deleted or ():
        if clock + length > after.get(client, 0):
            raise UpdateRefused(c.CLOSE_INVALID_UPDATE, "update deletes what the board does not have")


class UpdateValidator:
    """Validates incoming updates against a twin of one board document."""

    def __init__(self, board: Doc[Any], limits: EntryLimits) -> None:
        self._board = board
        self._limits = limits
        self._new: list[tuple[str, str]] = []  # (column, key) of entries the update wrote
        self._changes = UpdateChanges()
        # What the last checked update did: the tasks it changed inside their entries, and
        # the tasks it created in `todo`.
        self.touched: set[str] = set()
        self.created: list[str] = []
        self._subs: list[tuple[Map[Any], Subscription]] = []
        self._unmirrored: list[bytes] = []
        self._collecting = True
        self._twin = self._make_twin()

    @property
    def changes(self) -> UpdateChanges:
        """What the last checked update does to the board."""
        return self._changes

    def close(self) -> None:
        """Stop observing the twin (the room leaves this board document: a rotation).

        The twin's observers are held by Yrs and refer back to this validator: a cycle Python's
        collector cannot see, which would keep the validator, its twin and the board document
        alive for good.
        """
        for ymap, sub in self._subs:
            ymap.unobserve(sub)
        self._subs = []
        self._unmirrored.clear()

    def _make_twin(self) -> Doc[Any]:
        self.close()  # the board's state includes what was not mirrored yet
        twin: Doc[Any] = Doc()
        twin.apply_update(self._board.get_update())
        # What the previous checks read of the twin, kept for the next (see `_decoded_state`).
        self._known_state: tuple[bytes, dict[int, int]] | None = None
        self._known_roots: int | None = None
        self._columns = {name: twin.get(name, type=Map) for name in c.COLUMNS}
        for name, ymap in self._columns.items():
            self._subs.append((ymap, observe_events(ymap, self._collector(name), deep=True)))
        control = twin.get(c.CONTROL, type=Map)
        self._subs.append((control, observe_events(control, self._on_control)))
        meta = twin.get(c.META, type=Map)
        self._subs.append((meta, observe_events(meta, self._on_meta, deep=True)))
        return twin

    def _on_control(self, event: Any) -> None:
        if self._collecting:
            self._changes.control.update(event_keys(event))

    def _on_meta(self, events: list[Any]) -> None:
        if self._collecting:
            self._changes.meta = True

    def _collector(self, column: str) -> Any:
        def collect(events: list[Any]) -> None:
            if not self._collecting:
                return
            changes = self._changes
            for event in events:
                path = event_path(event)
                if path:  # inside an entry: a field, or an output append
                    task = str(path[0])
                    self.touched.add(task)
                    if len(path) == 1 and is_map_event(event):
                        changes.fields.setdefault((column, task), set()).update(event_keys(event))
                    elif len(path) == 2 and path[1] == c.F_OUTPUT and not is_map_event(event):
                        changes.texts.add((column, task))
                    else:
                        # `output` is the only shared type an entry holds; anything else
                        # nested could grow without bound, one small update at a time.
                        changes.nested.add((column, task))
                elif is_map_event(event):
                    for key, change in event_keys(event).items():
                        if change.get("action") == "delete":
                            changes.removed.add((column, key))
                        else:
                            self._new.append((column, key))

        return collect

    def mirror(self, update: bytes) -> bool:
        """Note an update the server itself wrote to the board (the embedded broker); True
        for the first since the twin caught up, when a `catch_up` is due.

        It reaches the twin at the next `catch_up`, merged with its neighbours: the room calls
        that once the messages the write caused have gone out, so the broker's write costs no
        twin work on its way out to the peers. A check catches up first in any case.
        """
        self._unmirrored.append(update)
        return len(self._unmirrored) == 1

    def catch_up(self) -> None:
        """Apply the mirrored updates to the twin, and read its state for the next check."""
        if not self._unmirrored:
            return
        pending, self._unmirrored = self._unmirrored, []
        self._collecting = False  # already on the board: nothing to check
        try:
            self._twin.apply_update(pending[0] if len(pending) == 1 else merge_updates(*pending))
        finally:
            self._collecting = True
        twin = self._twin
        with twin.transaction():
            self._known_roots = root_count(twin)
            self._decoded_state(twin.get_state())

    def _decoded_state(self, state: bytes) -> dict[int, int]:
        """`decode_state_vector(state)`, kept for the next call: a check's state before is
        the previous check's state after, or what `catch_up` read after the server's writes
        (a Python pass over an entry per client the board ever had)."""
        known = self._known_state
        if known is not None and known[0] == state:
            return known[1]
        decoded = decode_state_vector(state)
        self._known_state = (state, decoded)
        return decoded

    def check(self, update: bytes, authorize: Callable[[UpdateChanges], None] | None = None) -> None:
        """Raise `UpdateRefused` unless `update` may be applied to the board: it decodes,
        every entry it writes is valid and within the limits, and `authorize` (the writer's
        rights) accepts it.

        Fails closed: whatever goes wrong while checking (a value Python cannot read, a panic
        in Yrs, memory) refuses the update, and a refused update leaves the twin as the board
        is, so that the same update sent again is checked again as new."""
        try:
            self._check(update, authorize)
        except UpdateRefused:
            self._rebuild()
            raise
        except BaseException as exc:
            # A panic in Yrs (pyo3's PanicException) derives from BaseException. Nothing here
            # awaits, so no cancellation can arrive; an interrupt passes, with a sound twin.
            self._rebuild()
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            raise UpdateRefused(
                c.CLOSE_INVALID_UPDATE, f"update could not be checked ({type(exc).__name__})"
            ) from exc
        finally:
            self._new.clear()

    def reset(self) -> None:
        """Forget what the twin holds and copy the board again (after the board refused an
        update the twin took)."""
        self._rebuild()

    def _rebuild(self) -> None:
        self._twin = self._make_twin()

    def _check(self, update: bytes, authorize: Callable[[UpdateChanges], None] | None) -> None:
        self.catch_up()
        self._new.clear()
        self._changes = changes = UpdateChanges()
        self.touched.clear()
        self.created.clear()
        twin = self._twin
        roots = self._known_roots if self._known_roots is not None else root_count(twin)
        state_before = twin.get_state()
        try:
            twin.apply_update(update)
        except (ValueError, RuntimeError) as exc:  # pycrdt raises either for what it cannot take
            raise UpdateRefused(c.CLOSE_INVALID_UPDATE, f"update does not decode: {exc}") from exc
        # One read transaction for everything read below: pycrdt otherwise opens and commits
        # one per read, which costs more than most of the reads themselves.
        with twin.transaction():
            self._inspect(update, state_before, roots, changes)
        if authorize is not None:
            authorize(changes)

    def _inspect(self, update: bytes, state_before: bytes, roots: int, changes: UpdateChanges) -> None:
        """What the update did to the twin, each written entry checked (see `check`)."""
        twin = self._twin
        state_after = twin.get_state()
        before = self._decoded_state(state_before)
        after = before if state_after == state_before else self._decoded_state(state_after)
        changes.writers = {cid for cid, clock in after.items() if clock > before.get(cid, 0)}
        _refuse_pending(update, state_after, after)
        self._known_roots = root_count(twin)  # a refusal rebuilds the twin, and forgets it
        if self._known_roots != roots:
            changes.unknown_roots = set(twin.keys()) - KNOWN_ROOTS
            if changes.unknown_roots:
                raise UpdateRefused(
                    c.CLOSE_FORBIDDEN,
                    f"forbidden: unknown root type {min(changes.unknown_roots)[:40]!r}",
                )
        if changes.nested:
            column, key = min(changes.nested)
            raise UpdateRefused(
                c.CLOSE_INVALID_TASK,
                f"invalid task: {column}[{key[:24]!r}]: only `output` may be a shared type",
            )
        # An entry written whole by an update too small to hold more JSON than a limit cannot
        # be over it: only bigger updates' entries are measured.
        limits = self._limits
        measure_request = len(update) * JSON_BYTES_PER_UPDATE_BYTE > limits.max_task_bytes
        measure_entry = len(update) * JSON_BYTES_PER_UPDATE_BYTE > limits.max_entry_bytes
        for column, key in dict.fromkeys(self._new):
            # Read after the whole update: an entry it created and moved on again (a
            # worker's doing -> done in one go) is not on the board and needs no check.
            fields = read_entry(self._columns[column], key, _ABSENT)
            if fields is _ABSENT:
                continue
            # `fields` may be `NotAMap` (null, a plain object) or `Unreadable`: an invalid
            # entry, not a deletion.
            self._check_entry(_NewEntry(column, key, fields, measure_request, measure_entry))
            shared = shared_fields(self._columns[column], key)
            if shared and shared != [c.F_OUTPUT]:
                name = min(set(shared) - {c.F_OUTPUT})
                raise UpdateRefused(
                    c.CLOSE_INVALID_TASK,
                    f"invalid task: {column}[{key[:24]!r}].{name[:24]}: only `output` may be a shared type",
                )
            changes.written[(column, key)] = fields
            if column == c.TODO:
                self.created.append(key)
        for column, key in changes.fields:
            # A field set inside an existing entry (a cancel, say) must leave it valid too, and
            # is always measured: small updates, one field each, add up.
            if (column, key) not in changes.written:
                fields = read_entry(self._columns[column], key, _ABSENT)
                if fields is not _ABSENT and not isinstance(fields, NotAMap):
                    self._check_entry(_NewEntry(column, key, fields))
        for column, key in changes.texts:
            # Appends one small update at a time: the text's length is what bounds them.
            length = output_length(self._columns[column], key)
            if length > limits.max_entry_bytes:
                raise UpdateRefused(
                    c.CLOSE_TASK_TOO_LARGE,
                    f"task too large: {column}[{key[:24]!r}].output is over the limit of "
                    f"{limits.max_entry_bytes}",
                )

    def _check_entry(self, entry: _NewEntry) -> None:
        check_entry(entry.column, entry.key, entry.value, self._limits,
                    measure_request=entry.measure_request, measure_entry=entry.measure_entry)


def check_entry(
    column: str, key: str, value: Any, limits: EntryLimits, *, measure_request: bool = True,
    measure_entry: bool = True,
) -> None:
    """Raise `UpdateRefused` (4422 invalid, 4413 too large) unless `value`, as `read_entry`
    read the entry under `key` of `column`, is a valid task entry within `limits`."""
    # Close reasons hold 123 bytes: say what is wrong first, name the entry briefly.
    where = f"{column}[{key[:24]!r}]"
    if isinstance(value, Unreadable):
        raise UpdateRefused(c.CLOSE_INVALID_TASK, f"invalid task: {where}: {value.reason}")
    if not isinstance(value, dict):  # `NotAMap`, read as the value it wraps
        # A plain JSON object reads as a dict too, but no peer takes it for an entry: the
        # broker would leave it in `todo` for good.
        inner = value.value if isinstance(value, NotAMap) else value
        kind = "a plain object" if isinstance(inner, dict) else type(inner).__name__
        raise UpdateRefused(c.CLOSE_INVALID_TASK, f"invalid task: {where} must be a Y.Map, not {kind}")
    if value.get(c.F_ID) != key:
        raise UpdateRefused(c.CLOSE_INVALID_TASK, f"invalid task: {where}: its id differs from its key")
    try:
        # The bounds first: the schema's validation need not meet a value of any depth.
        check_fields(value, limits, measure_request=measure_request, measure_entry=measure_entry)
        # Every column's model holds the request's (a `TaskEntry` is a `TaskRequest`), so one
        # validation checks a new task in `todo` as a request and as an entry.
        entry_from_fields(value)
    except TaskTooLargeError as exc:
        raise UpdateRefused(c.CLOSE_TASK_TOO_LARGE, f"task too large: {where}: {exc}") from exc
    except InvalidTaskError as exc:
        raise UpdateRefused(c.CLOSE_INVALID_TASK, f"{exc} in {where}") from exc


def check_new_task(fields: dict[str, Any], limits: EntryLimits) -> None:
    """The check a task the server writes for somebody (the HTTP API) passes, as a websocket
    client's would: the bounds, the size limits and the schema; raises `UpdateRefused` with the
    code a websocket client would get (4413 too large, 4422 invalid)."""
    check_entry(c.TODO, str(fields.get(c.F_ID)), fields, limits)
