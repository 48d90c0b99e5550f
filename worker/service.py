"""The worker: takes the tasks the broker assigned to it, streams a backend's output into them.

Each task runs in its own slot task: `prepared -> doing` (with a fresh `output` Y.Text), one
append per chunk, `doing -> done` with status, result, usage and timings. A task whose entry
stops being ours (requeued to another attempt, or gone) is abandoned without writing more.

The move to `doing` is written when the peer's writer next wakes (`BoardPeer.before_send`),
that is as soon as the slot task yields to the event loop, with the text produced until then.
A backend that answers without yielding (the echo backend at zero delay, a refusal, a task
cancelled before it started) is then already finished: its task goes `prepared -> done` in
one write. Peers see nothing different (both moves would have reached them in one message),
and the `doing` copy of the entry, created and deleted at once, is never written, sent,
checked or stored.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.abc import TaskStatus as StartStatus
from pycrdt import Map, Text

import kanbanmesh
from awareness.states import WorkerState, valid_digest
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import entry_from_map, now_ms
from kanbanmesh.board.embeddings import encode_vectors
from kanbanmesh.board.events import ColumnWatch, event_keys
from kanbanmesh.board.invalid import invalid_entry
from kanbanmesh.board.limits import EntryLimits, json_bytes
from kanbanmesh.board.prefix import MAX_DIGEST_ENTRIES
from kanbanmesh.board.reads import plain_fields, read_field, read_items
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskEntry, TaskKind, TaskStatus, Timings, Usage
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import BackendError, InvalidTaskError, KanbanMeshError
from kanbanmesh.notify import ChangeSignal
from kanbanmesh.peer import BoardPeer, peer_id
from worker.backends.base import Backend, CachingBackend, Finished, GenerationRequest, TextChunk
from worker.backends.embedding_base import EmbeddingBackend, EmbeddingRequest
from worker.prompt import build_prompt

_ABSENT = object()  # a key a map does not hold
# Room left in an entry for the fields a finish adds (status, usage, timings...), and for each
# retrieved chunk the citation it may add.
_ENTRY_SLACK_BYTES = 1024
_CITATION_BYTES = 512
_MAX_JSON_BYTES_PER_CHAR = 6  # `\u0001`: the most a character takes in JSON
_DEFAULT_LIMITS = EntryLimits()
# Finishes remembered for a check after a refused write (`Worker._recheck`): more than one
# refusal can cover.
_MAX_UNCONFIRMED_FINISHES = 1024
# Refusals one run may see before it gives up: a refusal may be another task's, but one whose
# own writes are refused would otherwise be written again at every reconnect.
_MAX_RUN_REFUSALS = 2
# An embed task not finished after this long is written as started (`prepared -> doing`):
# well within the broker's start deadline (10 s by default), past most embeddings' time.
_EMBED_START_AFTER_S = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    name: str = ""
    slots: int = 1
    # "" = `worker-<12 hex>`. With a token, the id is `<the token's subject>/<id>`: the server
    # binds worker ids to subjects (docs/protocol.md section 10).
    worker_id: str = ""
    # Busy/ready flips are announced at most this often: every awareness update goes to
    # every peer of the board, and a fast worker flips twice per task.
    presence_interval_s: float = 0.25
    # The awareness state is renewed this often: it is the worker's heartbeat, and a broker
    # gives the tasks of a worker silent for its lease (30 s by default) to others.
    heartbeat_s: float = 10.0


@dataclass
class _Outcome:
    status: TaskStatus = TaskStatus.SUCCEEDED
    text: str = ""
    error: dict[str, str] | None = None
    prompt_ms: float = 0.0  # reading the prompt, as the backend measured it
    usage: Usage = field(default_factory=Usage)
    first_chunk_at: float | None = None
    chunks: int = 0
    finish_reason: str = "stop"  # stop | length (from the backend)
    citations: list[dict[str, Any]] | None = None  # the retrieved sources the prompt used
    embeddings: list[str] | None = None  # an embed task's vectors, as the board holds them
    dimensions: int = 0  # their length


@dataclass
class _Run:
    attempt: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    cancelled: bool = False
    # The entry's output text, as last found ours and not cancelled, and the peer's count of
    # remote updates then: until another update arrives, appending needs no new check.
    output: Text | None = None
    checked_at: int = -1
    # Until the move to `doing` is written: the fields it sets, and the text produced so far.
    start: dict[str, Any] | None = None
    buffered: str = ""
    # The text this run put into the board's `output` (after a refused write, the server's
    # copy may lack the last of it: it is appended again).
    written: str = ""
    text_chars: int = 0  # characters of text produced so far
    refusals: int = 0  # refusals of the peer's writes since this run started (see `_on_refused`)
    seen_refusals: int = 0  # of those, the ones after which its output was restored
    # The entry limit of the task's board (as the run started), and once the text came near
    # it, the most text (as JSON bytes) the entry may hold twice within it (`_within_limit`).
    max_entry_bytes: int = 1 << 62
    text_budget: int | None = None


class Worker:
    """Serves one backend on one board through a `BoardPeer`: an LLM `Backend` runs chat
    tasks, an `EmbeddingBackend` embed tasks; the task lifecycle (pick-up, lease, cancel,
    start, finish) is the same for both."""

    def __init__(self, peer: BoardPeer, backend: Backend | EmbeddingBackend, settings: WorkerSettings) -> None:
        if settings.slots < 1:
            raise ValueError("a worker needs at least one slot")
        self._peer = peer
        self._backend = backend
        self._embedder: EmbeddingBackend | None = None
        self._llm: Backend | None = None
        if isinstance(backend, EmbeddingBackend):
            self._embedder = backend
        else:
            self._llm = backend
        self._kind = TaskKind.EMBED if self._embedder is not None else TaskKind.CHAT
        self._settings = settings
        # A backend with a prompt cache says what it holds; the worker announces it (`cache`).
        self._digest = backend if isinstance(backend, CachingBackend) else None
        self._digest_refused = False  # one out of bounds was logged (not again at every change)
        self.id = peer_id(settings.worker_id or f"worker-{uuid.uuid4().hex[:12]}", peer.subject)
        self.name = settings.name or self.id
        self._running: dict[str, _Run] = {}
        self._starts: dict[str, _Run] = {}  # runs whose move to `doing` is not written yet
        peer.before_send(self._write_starts)
        # Tasks that entered `prepared` since the last pick-up (any worker's: the observer
        # sees keys, the pick-up reads whose they are), and whether `prepared` must be read
        # whole instead (at start, and on a new replica). Listing `prepared` on every update
        # costs as much as the column's history: Yrs walks every key it ever held.
        self._entered: set[str] = set()
        self._scan_all = True
        self._prepared_watch = ColumnWatch(
            lambda: self._peer.board.column_map(Column.PREPARED), self._on_prepared_event
        )
        peer.on_reset(self._on_new_replica)
        peer.on_refused(self._on_refused)
        # Finishes written but not yet known to be on the server: task id -> attempt. A refused
        # write drops what the peer had not sent; each of these is then checked (`_recheck`).
        self._finishes: dict[str, int] = {}
        self._recheck_due = False
        self._draining = False
        self._announced: dict[str, Any] | None = None
        self._presence_due = anyio.Event()
        self._last_beat = 0.0  # anyio clock of the last awareness renewal
        self._idle = ChangeSignal()
        # Set when somebody asked this worker to drain through the board (`kanbanmesh worker
        # --drain NAME`); whoever runs the worker drains it and stops.
        self.drain_requested = anyio.Event()
        self.completed = 0

    async def run(self, *, task_status: StartStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce the worker and serve assigned tasks until cancelled."""
        await self._backend.start()
        self._prepared_watch.start()
        self._scan_all = True
        try:
            self._announce()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._announce_changes)
                task_status.started()
                while True:
                    self._recheck()
                    self._pick_up(tg)
                    self._watch_cancels()
                    self._watch_drain_request()
                    with anyio.move_on_after(1.0):
                        await self._peer.changed.wait()
        finally:
            self._prepared_watch.stop()  # or the replica stays alive (ColumnWatch)
            with anyio.CancelScope(shield=True):
                await self._backend.stop()

    @property
    def peer(self) -> BoardPeer:
        """The worker's connection to the board."""
        return self._peer

    def _on_new_replica(self) -> None:
        if self._prepared_watch.running:  # follow the new document instead, read whole
            self._prepared_watch.restart()
            self._scan_all = True

    def _on_refused(self, error: KanbanMeshError) -> None:
        """The server refused a write of ours: the peer has a new replica and reconnects.
        Runs re-append what the refusal dropped of their text (`_append_to_output`); a run
        whose writes are refused again gives up (`_append`); finishes not yet confirmed are
        checked once the new replica is synced."""
        log.warning("worker %s: a write was refused (%s); carrying on", self.name, error)
        for run in self._running.values():
            run.refusals += 1
        self._refusal = error
        self._recheck_due = True

    def _recheck(self) -> None:
        """After a refusal: a finish of ours that did not reach the server (the task is still
        ours in `prepared` or `doing`) is written again as a failure, without the text that
        may have been what the server refused. Also forgets finishes the server has."""
        if not self._recheck_due or not self._peer.synced or not self._peer.connected:
            return
        self._recheck_due = False
        error = getattr(self, "_refusal", None)
        for task_id, attempt in list(self._finishes.items()):
            if task_id in self._running:
                continue
            probe = _Run(attempt=attempt)
            for column in (Column.DOING, Column.PREPARED):
                if self._ours(column, task_id, probe) is None:
                    continue
                reason = getattr(error, "reason", "") or str(error)
                fields = {
                    c.F_STATUS: TaskStatus.FAILED.value,
                    c.F_RESULT: "",
                    c.F_ERROR: {"code": "write_refused",
                                "message": f"the server refused the worker's write: {reason}"[:500]},
                    c.F_FINISHED_AT: now_ms(),
                }
                try:
                    self._peer.board.move(task_id, column, Column.DONE, PeerRole.WORKER,
                                          set_fields=fields, keep_output=False)
                except KanbanMeshError:
                    log.exception("task %s: could not write its failure", task_id)
                break
        self._finishes.clear()

    def _on_prepared_event(self, event: Any) -> None:
        for key, change in event_keys(event).items():
            if change.get("action") != "delete":
                self._entered.add(key)

    def _drain_keys(self) -> list[str]:
        return [c.DRAIN_PREFIX + self.id, c.DRAIN_PREFIX + self.name]

    def _watch_drain_request(self) -> None:
        # After every update the worker hears: one transaction for both lookups (pycrdt's
        # `Doc.get` and `in` cost 16 us together, this 6).
        if self.drain_requested.is_set():
            return
        control = self._peer.board.control
        with self._peer.doc.transaction():
            requested = any(read_field(control, key, _ABSENT) is not _ABSENT for key in self._drain_keys())
        if requested:
            self.drain_requested.set()

    async def clear_drain_request(self) -> None:
        """Remove the request that drained this worker (a worker of the same name started
        later must not drain at once), and see it reach the server."""
        control = self._peer.board.control
        with self._peer.doc.transaction():
            for key in self._drain_keys():
                if key in control:
                    del control[key]
        try:
            await self._peer.durable(timeout_s=2.0)
        except KanbanMeshError:
            log.warning("worker %s: could not confirm that its drain request was removed", self.name)

    def drain(self) -> None:
        """Take no new tasks (announced as `draining`, at once); running ones finish."""
        self._draining = True
        self._announce()

    async def drain_and_wait(self, timeout_s: float) -> bool:
        """Drain, then wait until every task assigned to this worker is finished; False if
        `timeout_s` passed first (what is left is the broker's to requeue once we leave)."""
        self.drain()
        with anyio.move_on_after(timeout_s):
            while self._running or self._assigned_waiting():
                with anyio.move_on_after(0.5):
                    await self._idle.wait()
            return True
        return False

    def _assigned_waiting(self) -> bool:
        prepared = self._peer.board.column_map(Column.PREPARED)
        return any(
            isinstance(entry, Map) and read_field(entry, c.F_WORKER) == self.id
            for _, entry in read_items(prepared)
        )

    def _publish(self) -> None:
        """Ask for the current presence to be announced (rate-limited)."""
        self._presence_due.set()

    async def _announce_changes(self) -> None:
        while True:
            with anyio.move_on_after(self._settings.heartbeat_s) as quiet:
                await self._presence_due.wait()
            self._presence_due = anyio.Event()
            self._announce(renew=quiet.cancelled_caught)
            await anyio.sleep(self._settings.presence_interval_s)

    def _announce(self, *, renew: bool = False) -> None:
        busy = len(self._running)
        if self._draining:
            state = WorkerState.DRAINING
        elif busy >= self._settings.slots:
            state = WorkerState.WORKING
        else:
            state = WorkerState.READY
        presence: dict[str, Any] = {
            c.A_ROLE: PeerRole.WORKER.value,
            c.A_ID: self.id,
            c.A_NAME: self.name,
            c.A_MODELS: self._backend.models,
            c.A_SLOTS: self._settings.slots,
            c.A_STATE: state.value,
            c.A_TASKS: sorted(self._running),
            c.A_ENGINE: self._backend.engine,
            c.A_VERSION: kanbanmesh.__version__,
            c.A_KINDS: [self._kind.value],
        }
        if self._digest is not None:
            # In the announcement that a task's start or finish makes anyway (a digest changes
            # then): never an awareness update of its own.
            presence[c.A_CACHE] = self._cache_digest(self._digest)
        # Only on change or as the heartbeat: every awareness update goes to every peer.
        if renew or presence != self._announced:
            self._announced = presence
            self._peer.set_presence(presence)
            self._last_beat = anyio.current_time()

    def _cache_digest(self, backend: CachingBackend) -> dict[str, int]:
        """The backend's digest as brokers accept it (`awareness.states.valid_digest`). One they
        would drop, or a backend failing to say, is announced empty (and logged once until a
        valid one comes): it only steers routing, and must not stop the worker's heartbeat."""
        try:
            valid = valid_digest(backend.cache_digest())
        except Exception:
            if not self._digest_refused:
                log.exception("worker %s: the backend could not give its cache digest; "
                              "announced empty", self.name)
            self._digest_refused = True
            return {}
        if valid is None:
            if not self._digest_refused:
                log.warning("worker %s: the backend's cache digest is out of bounds (at most %d "
                            "prefix hashes to token counts); announced empty",
                            self.name, MAX_DIGEST_ENTRIES)
            self._digest_refused = True
            return {}
        self._digest_refused = False
        return valid

    def _pick_up(self, tg: TaskGroup) -> None:
        # Even while draining: a task in `prepared` with our id was assigned before the
        # broker saw us draining, and nobody else will run it.
        prepared = self._peer.board.column_map(Column.PREPARED)
        started = False
        with self._peer.doc.transaction():  # one for every read of the scan
            if self._scan_all:
                self._scan_all = False
                self._entered.update(task_id for task_id, _ in read_items(prepared))
            for task_id in list(self._entered):
                if len(self._running) >= self._settings.slots:
                    break  # the rest stay noted for a free slot
                if task_id in self._running:
                    continue  # a new attempt of a run still ending: once it has ended
                self._entered.discard(task_id)
                entry = read_field(prepared, task_id)
                if not isinstance(entry, Map) or read_field(entry, c.F_WORKER) != self.id:
                    continue  # gone on already, or another worker's
                run = _Run(attempt=int(read_field(entry, c.F_ATTEMPT) or 1))
                self._running[task_id] = run
                tg.start_soon(self._execute, task_id, run)
                started = True
        if started:
            self._publish()

    def _watch_cancels(self) -> None:
        doing = self._peer.board.column_map(Column.DOING)
        for task_id, run in self._running.items():
            entry = read_field(doing, task_id)
            if isinstance(entry, Map) and read_field(entry, c.F_CANCEL) and not run.cancelled:
                run.cancelled = True
                run.scope.cancel()

    def _ours(self, column: Column, task_id: str, run: _Run) -> Map[Any] | None:
        with self._peer.doc.transaction():  # one for the three reads
            entry = read_field(self._peer.board.column_map(column), task_id)
            if not isinstance(entry, Map):
                return None
            if read_field(entry, c.F_WORKER) != self.id or int(read_field(entry, c.F_ATTEMPT) or 1) != run.attempt:
                return None
            return entry

    async def _execute(self, task_id: str, run: _Run) -> None:
        try:
            await self._execute_inner(task_id, run)
        except Exception as exc:  # one task's trouble (an entry it cannot read...) ends that task
            log.exception("worker %s: task %s failed in the worker", self.name, task_id[:64])
            self._fail_as_invalid(task_id, run, f"the worker could not run it ({type(exc).__name__})")
        finally:
            self._running.pop(task_id, None)
            self._starts.pop(task_id, None)  # a run that ended unstarted is picked up again
            self._publish()
            self._idle.notify()

    async def _check_lease(self) -> None:
        """Before writing: if this worker missed its own heartbeats (the process was stopped,
        or its loop starved), or has not heard from the server for as long (a link gone
        silent: the heartbeats it sent may never have arrived), its lease may have run out and
        its tasks gone to others. Renew the heartbeat and catch up with the server first, and
        write nothing until the server answers: the ownership checks that follow then see the
        board as it is, and a fenced attempt writes nothing."""
        if not self._peer.synced:
            # A new replica (after a refused write, or a new generation of the board) is empty
            # until its first sync: what is ours shows only then.
            try:
                await self._peer.wait_synced()
            except KanbanMeshError:
                return  # the peer stopped for good: the ownership checks find nothing ours
        now, limit = anyio.current_time(), 2 * self._settings.heartbeat_s
        if now - self._last_beat <= limit and now - self._peer.last_heard <= limit:
            return
        self._announce(renew=True)
        while not await self._peer.resync(timeout_s=self._settings.heartbeat_s):
            await anyio.sleep(min(1.0, self._settings.heartbeat_s))  # not connected: wait for it

    async def _execute_inner(self, task_id: str, run: _Run) -> None:
        await self._check_lease()
        entry = self._ours(Column.PREPARED, task_id, run)
        if entry is None:
            return
        started_at = now_ms()
        run.start = {c.F_STARTED_AT: started_at}  # written by `_write_starts`, or by `_finish`
        run.max_entry_bytes = (EntryLimits.of_board(self._peer.board) or _DEFAULT_LIMITS).max_entry_bytes
        try:
            task = entry_from_map(entry)
        except InvalidTaskError as exc:
            self._finish(task_id, run, None, started_at, _Outcome(
                TaskStatus.FAILED, error={"code": "invalid_task", "message": str(exc)}))
            return
        if self._embedder is None or task.task_kind is not TaskKind.EMBED:
            self._starts[task_id] = run
            self._peer.flush_soon()
        # else an embedding, done in milliseconds: its start goes out with its finish
        # (`prepared -> done`, one update for the server to check and send, not two), unless
        # it runs long enough that the broker's start deadline must see it started (`_embed`).
        if task.cancel:
            self._finish(task_id, run, task, started_at, _Outcome(TaskStatus.CANCELLED))
            return
        outcome = _Outcome()
        with run.scope:
            if task.task_kind is not self._kind:  # a broker that routes by model alone
                outcome.status, outcome.error = TaskStatus.FAILED, {
                    "code": "unsupported_kind",
                    "message": f"a {self._kind.value} worker cannot run a {task.task_kind.value} task"}
            elif self._embedder is not None:
                await self._embed(self._embedder, task_id, run, task, outcome)
            elif self._llm is not None:
                await self._generate(self._llm, task_id, run, task, outcome)
        if run.cancelled:
            outcome.status = TaskStatus.CANCELLED
        with anyio.CancelScope(shield=True):  # a stopping worker still hands its outcome in
            await self._check_lease()
        self._finish(task_id, run, task, started_at, outcome)

    async def _generate(
        self, backend: Backend, task_id: str, run: _Run, task: TaskEntry, outcome: _Outcome
    ) -> None:
        turns = tuple((m.role, m.content) for m in [*(task.history or []), *task.chat()])
        request = GenerationRequest(
            messages=task.messages, prompt=task.prompt, params=task.params, model=task.model,
            turns=turns,
        )
        if task.history or task.context is not None:
            # History and retrieved sources: the template, trimmed to the model's context.
            fits = getattr(backend, "fits", None)
            prompt = build_prompt(task, fits if callable(fits) else None)
            # The turns the broker names (kanbanmesh/board/prefix.py) are the model's only when
            # the template kept them all and added no sources: else a cache holds other text.
            same = [(m.role, m.content) for m in prompt.messages] == list(turns)
            request = replace(request, messages=prompt.messages, prompt=None, turns=turns if same else ())
            if task.context is not None:
                outcome.citations = [citation.model_dump() for citation in prompt.citations]
        try:
            async with aclosing(backend.generate(request)) as events:
                async for event in events:
                    await self._check_lease()
                    if isinstance(event, Finished):
                        outcome.usage = event.usage
                        outcome.finish_reason = event.finish_reason
                        outcome.prompt_ms = event.prompt_ms
                        continue
                    if not self._append(task_id, run, event, outcome):
                        run.scope.cancel()  # no longer ours: stop spending the backend
                        return
        except BackendError as exc:
            outcome.status = TaskStatus.FAILED
            outcome.error = {"code": exc.code, "message": exc.message}

    async def _embed(
        self, backend: EmbeddingBackend, task_id: str, run: _Run, task: TaskEntry, outcome: _Outcome
    ) -> None:
        """An embed task: the backend's vectors of its inputs, encoded as the board holds
        them (kanbanmesh.board.embeddings), unless the entry could not hold them."""
        request = EmbeddingRequest(inputs=task.input or [], model=task.model, dimensions=task.dimensions)
        error: BackendError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._start_after, task_id, run, _EMBED_START_AFTER_S)
            try:
                found = await backend.embed(request)
            except BackendError as exc:
                error = exc
            tg.cancel_scope.cancel()
        if error is not None:
            outcome.status = TaskStatus.FAILED
            outcome.error = {"code": error.code, "message": error.message}
            return
        encoded = encode_vectors(found.vectors)
        room = run.max_entry_bytes - json_bytes(task.to_fields()) - _ENTRY_SLACK_BYTES
        if sum(len(vector) + 3 for vector in encoded) > room:  # each a JSON string and a comma
            outcome.status, outcome.error = TaskStatus.FAILED, {
                "code": "output_too_large",
                "message": f"{len(encoded)} vectors of {found.vectors.shape[1]} dimensions do not fit "
                           f"the board's entry limit of {run.max_entry_bytes} bytes; send fewer inputs"}
            return
        outcome.embeddings, outcome.dimensions = encoded, int(found.vectors.shape[1])
        outcome.usage = Usage(prompt_tokens=found.prompt_tokens, total_tokens=found.prompt_tokens)

    async def _start_after(self, task_id: str, run: _Run, delay_s: float) -> None:
        """Write the move to `doing` of a run still unstarted after `delay_s`."""
        await anyio.sleep(delay_s)
        if run.start is not None:
            self._starts[task_id] = run
            self._peer.flush_soon()

    def _write_starts(self) -> None:
        """Write the moves to `doing` still pending, each with the text produced so far (the
        peer calls this before it sends). A task no longer ours is abandoned."""
        if not self._peer.synced:
            return  # a new replica: once it is synced (the next wake-up after the sync)
        starts, self._starts = self._starts, {}
        for task_id, run in starts.items():
            start, run.start = run.start, None
            if start is None:
                continue  # finished in one write
            if self._ours(Column.PREPARED, task_id, run) is None:
                run.scope.cancel()  # requeued or gone meanwhile: stop spending the backend
                continue
            try:
                entry = self._peer.board.move(task_id, Column.PREPARED, Column.DOING, PeerRole.WORKER,
                                              set_fields=start, new_output=True)
            except KanbanMeshError:  # not in `prepared` after all: nothing of it is ours
                log.exception("task %s: could not write its start", task_id)
                run.scope.cancel()
                continue
            output = read_field(entry, c.F_OUTPUT)
            if isinstance(output, Text):
                if run.buffered:
                    output += run.buffered
                    run.written += run.buffered
                run.output, run.checked_at = output, self._peer.remote_updates
            run.buffered = ""
            run.seen_refusals = run.refusals

    def _append(self, task_id: str, run: _Run, chunk: TextChunk, outcome: _Outcome) -> bool:
        if run.refusals > _MAX_RUN_REFUSALS:
            # Refused again and again after starting over: whatever this run writes is refused. Give
            # it up; `_finish` writes its failure without the text.
            outcome.status, outcome.error = TaskStatus.FAILED, {
                "code": "write_refused", "message": "the server refused this task's output"}
            return False
        run.text_chars += len(chunk.text)
        # A character is at most 6 bytes of JSON (`\u0001`): far from the limit (every task
        # but a huge answer), nothing is measured.
        if run.text_chars * _MAX_JSON_BYTES_PER_CHAR > run.max_entry_bytes // 2 - _ENTRY_SLACK_BYTES \
                and not self._within_limit(task_id, run, outcome.text + chunk.text):
            # The entry would pass the server's limit (`output` and `result` both hold the
            # text): end here, as a model does at the end of its context.
            outcome.finish_reason = "length"
            return False
        if run.start is not None:  # not on the board as started yet: `_write_starts` adds it
            run.buffered += chunk.text
        elif not self._append_to_output(task_id, run, chunk.text):
            return False
        outcome.text += chunk.text
        outcome.chunks += chunk.tokens
        if outcome.first_chunk_at is None:
            outcome.first_chunk_at = now_ms()
        return True

    def _append_to_output(self, task_id: str, run: _Run, text: str) -> bool:
        """Append to the task's `output` while it is ours and not cancelled; False otherwise."""
        output = run.output
        if output is None or run.checked_at != self._peer.remote_updates:
            entry = self._ours(Column.DOING, task_id, run)
            if entry is None and run.refusals != run.seen_refusals:
                entry = self._restart(task_id, run)
            if entry is None:
                return False
            if read_field(entry, c.F_CANCEL):
                run.cancelled = True
                return False
            output = read_field(entry, c.F_OUTPUT)
            if not isinstance(output, Text):
                return False
            if run.refusals != run.seen_refusals and not self._restore(output, run):
                return False
            run.output, run.checked_at = output, self._peer.remote_updates
        # `entry["output"] += x` would replace the Text; append to the Text itself.
        output += text
        run.written += text
        return True

    def _restart(self, task_id: str, run: _Run) -> Map[Any] | None:
        """After a refused write: a start the server never got (the task is still ours in
        `prepared`) is written again, with the text so far."""
        run.seen_refusals = run.refusals
        if self._ours(Column.PREPARED, task_id, run) is None:
            return None
        started = {c.F_STARTED_AT: now_ms()}
        entry = self._peer.board.move(task_id, Column.PREPARED, Column.DOING, PeerRole.WORKER,
                                      set_fields=started, new_output=True)
        output = read_field(entry, c.F_OUTPUT)
        if isinstance(output, Text) and run.written:
            output += run.written
        return entry

    def _restore(self, output: Text, run: _Run) -> bool:
        """After a refused write: append to the server's `output` what the refusal dropped of
        this run's text; False when it is not a beginning of that text (not ours to go on)."""
        run.seen_refusals = run.refusals
        held = str(output)
        if held == run.written:
            return True
        if not run.written.startswith(held):
            return False
        output += run.written[len(held):]
        return True

    def _finish(
        self, task_id: str, run: _Run, task: TaskEntry | None, started_at: float, outcome: _Outcome
    ) -> None:
        start, run.start = run.start, None
        source = Column.DOING if start is None else Column.PREPARED
        if self._ours(source, task_id, run) is None and start is None and run.refusals:
            # A refused write took the start with it: the task is still ours in `prepared`.
            source, start = Column.PREPARED, {c.F_STARTED_AT: started_at}
        if self._ours(source, task_id, run) is None:
            log.info("task %s attempt %d is no longer ours; dropping its outcome", task_id, run.attempt)
            return
        finished = now_ms()
        usage = outcome.usage
        if usage.completion_tokens == 0 and outcome.chunks:
            usage = Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=outcome.chunks,
                total_tokens=usage.prompt_tokens + outcome.chunks,
                cached_tokens=usage.cached_tokens,
            )
        gen_ms = finished - (outcome.first_chunk_at or started_at)
        timings = Timings(
            queued_ms=max(0.0, started_at - (task.created_at if task and task.created_at else started_at)),
            ttft_ms=(outcome.first_chunk_at - started_at) if outcome.first_chunk_at else 0.0,
            total_ms=finished - started_at,
            tokens_per_s=(usage.completion_tokens / (gen_ms / 1000.0)) if gen_ms > 0 else 0.0,
            prompt_ms=outcome.prompt_ms,
        )
        fields: dict[str, Any] = {
            c.F_STATUS: outcome.status.value,
            c.F_RESULT: outcome.text,
            c.F_TOKENS: usage.completion_tokens,
            c.F_USAGE: usage.model_dump(),
            c.F_TIMINGS: timings.model_dump(),
            c.F_FINISHED_AT: finished,
            c.F_FINISH_REASON: outcome.finish_reason,
        }
        if outcome.error is not None:
            fields[c.F_ERROR] = outcome.error
        if outcome.citations is not None:
            fields[c.F_CITATIONS] = outcome.citations
        if task is not None and task.kind is TaskKind.EMBED:
            del fields[c.F_FINISH_REASON]  # nothing was generated
            if outcome.embeddings is not None and outcome.status is TaskStatus.SUCCEEDED:
                fields[c.F_EMBEDDINGS] = outcome.embeddings
                fields[c.F_DIMENSIONS] = outcome.dimensions
        given_up = outcome.error is not None and outcome.error.get("code") == "write_refused"
        if given_up:
            fields[c.F_RESULT] = ""  # the text may be what the server refused
        if start is not None:  # never written as started: `prepared -> done` in one write
            fields.update(start)
            if not given_up:
                fields[c.F_OUTPUT] = Text(outcome.text)
        self._peer.board.move(task_id, source, Column.DONE, PeerRole.WORKER, set_fields=fields,
                              keep_output=not given_up)
        self.completed += 1
        self._finishes[task_id] = run.attempt
        while len(self._finishes) > _MAX_UNCONFIRMED_FINISHES:
            del self._finishes[next(iter(self._finishes))]

    def _fail_as_invalid(self, task_id: str, run: _Run, message: str) -> None:
        """Finish a task the worker could not run as `failed` (`invalid_task`), copying none of
        its fields but the id (`kanbanmesh.board.invalid`); best effort: a task left behind goes
        back to the queue at the broker's start deadline or lease."""
        fields = invalid_entry(task_id, None, None, f"invalid task: {message}")
        for column in (Column.DOING, Column.PREPARED):
            try:
                if self._ours(column, task_id, run) is None:
                    continue
                with self._peer.doc.transaction():
                    self._peer.board.delete(task_id, column)
                    self._peer.board.put_fields(Column.DONE, task_id, fields)
            except Exception:
                log.exception("worker %s: could not fail task %s either", self.name, task_id[:64])
            return

    def _within_limit(self, task_id: str, run: _Run, text: str) -> bool:
        """Whether `text` fits the task's entry when done: the entry holds it twice (`output`
        and `result`), beside the request, within the server's `max_entry_bytes` (published in
        `meta`; the default where the server publishes none). Measured only near the limit."""
        if run.text_budget is None:
            run.text_budget = self._text_budget(task_id, run)
        return json_bytes({"": text}) <= run.text_budget

    def _text_budget(self, task_id: str, run: _Run) -> int:
        entry = self._ours(Column.DOING, task_id, run) or self._ours(Column.PREPARED, task_id, run)
        try:
            fields = plain_fields(entry) if entry is not None else {}
        except KanbanMeshError:
            return 0
        fields.pop(c.F_OUTPUT, None)
        context = fields.get(c.F_CONTEXT)
        slack = _ENTRY_SLACK_BYTES + _CITATION_BYTES * (len(context) if isinstance(context, list) else 0)
        return max(0, (run.max_entry_bytes - json_bytes(fields) - slack) // 2)
