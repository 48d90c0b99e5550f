"""`GET /metrics`: what the mesh is doing, in Prometheus' text format (prometheus_client).

Counters and histograms move as tasks finish (the rooms report each entry that enters `done`);
gauges (tasks per column, workers by state, connections, updates) are read from the rooms at
scrape time. One registry per server: nothing global.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from awareness.states import workers_from_states
from kanbanmesh.board import constants as c
from kanbanmesh.server.hub import Hub
from kanbanmesh.server.room import BoardRoom

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MeshMetrics:
    """The server's metrics; `watch(room)` for each room the hub creates."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._hub = hub
        labels = ("board", "status", "model")
        self.finished = Counter("kanbanmesh_tasks_finished", "Tasks that reached done, by status and model",
                                labels, registry=self.registry)
        self.tokens = Counter("kanbanmesh_tokens_generated", "Completion tokens generated",
                              ("board", "model"), registry=self.registry)
        timing = ("board", "model")
        self.queue_wait = Histogram("kanbanmesh_queue_wait_seconds", "Task creation to start on a worker",
                                    timing, buckets=_SECONDS, registry=self.registry)
        self.ttft = Histogram("kanbanmesh_time_to_first_token_seconds", "Start to first output",
                              timing, buckets=_SECONDS, registry=self.registry)
        self.total = Histogram("kanbanmesh_task_duration_seconds", "Start to finish on the worker",
                               timing, buckets=_SECONDS, registry=self.registry)
        self.speed = Histogram("kanbanmesh_tokens_per_second", "Generation speed of each task", timing,
                               buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280), registry=self.registry)
        # The prompt cache, per worker: hit rate = cached / prompt tokens.
        self.prompt_tokens = Counter("kanbanmesh_prompt_tokens", "Prompt tokens of finished tasks",
                                     ("board", "worker"), registry=self.registry)
        self.cached_tokens = Counter("kanbanmesh_prompt_cached_tokens",
                                     "Prompt tokens a worker's prompt cache held (not evaluated)",
                                     ("board", "worker"), registry=self.registry)
        self.registry.register(_BoardCollector(hub))
        # Each finished task updates six labelled series; `labels()` validates and looks its
        # values up under a lock every time, so each board and model's series are kept here.
        self._series: dict[tuple[str, str], _ModelSeries] = {}

    def watch(self, room: BoardRoom) -> None:
        room.on_finished(lambda fields: self._finished(room.name, fields))

    def _finished(self, board: str, fields: dict[str, Any]) -> None:
        model = str(fields.get(c.F_MODEL) or "") or "any"
        series = self._series.get((board, model))
        if series is None:
            series = self._series[(board, model)] = _ModelSeries(self, board, model)
        series.finished(str(fields.get(c.F_STATUS) or "unknown")).inc()
        usage = fields.get(c.F_USAGE)
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int | float):
            series.tokens.inc(float(usage["completion_tokens"]))
        worker = fields.get(c.F_WORKER)
        if isinstance(usage, dict) and isinstance(worker, str) and worker:
            prompt, cached = usage.get("prompt_tokens"), usage.get("cached_tokens")
            if isinstance(prompt, int | float) and prompt > 0:
                self.prompt_tokens.labels(board, worker).inc(float(prompt))
                if isinstance(cached, int | float) and cached > 0:
                    self.cached_tokens.labels(board, worker).inc(float(cached))
        timings = fields.get(c.F_TIMINGS)
        if not isinstance(timings, dict):
            return
        for histogram, key, scale in series.timings:
            value = timings.get(key)
            if isinstance(value, int | float) and value > 0:
                histogram.observe(float(value) / scale)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelSeries:
    """One board and model's labelled series of `MeshMetrics`."""

    def __init__(self, metrics: MeshMetrics, board: str, model: str) -> None:
        self._metrics, self._board, self._model = metrics, board, model
        self._finished: dict[str, Any] = {}  # by status
        self.tokens = metrics.tokens.labels(board, model)
        # (series, the `timings` field it observes, that field's unit in seconds' terms)
        self.timings = (
            (metrics.queue_wait.labels(board, model), "queued_ms", 1000.0),
            (metrics.ttft.labels(board, model), "ttft_ms", 1000.0),
            (metrics.total.labels(board, model), "total_ms", 1000.0),
            (metrics.speed.labels(board, model), "tokens_per_s", 1.0),
        )

    def finished(self, status: str) -> Any:
        """The count of tasks that finished with `status`."""
        counter = self._finished.get(status)
        if counter is None:
            counter = self._finished[status] = self._metrics.finished.labels(self._board, status, self._model)
        return counter


class _BoardCollector(Collector):
    """Gauges read from the rooms when scraped."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("kanbanmesh_tasks", "Tasks on the live board", labels=["board", "column"])
        workers = GaugeMetricFamily("kanbanmesh_workers", "Workers present", labels=["board", "state"])
        slots = GaugeMetricFamily("kanbanmesh_worker_slots", "Slots of the workers present", labels=["board"])
        connections = GaugeMetricFamily("kanbanmesh_connections", "Open websocket connections", labels=["board"])
        applied = GaugeMetricFamily("kanbanmesh_updates_applied", "Updates applied since start", labels=["board"])
        refused = GaugeMetricFamily("kanbanmesh_updates_refused", "Updates refused since start", labels=["board"])
        archived = GaugeMetricFamily("kanbanmesh_tasks_archived", "Tasks moved to the archive since start",
                                     labels=["board"])
        for name, room in sorted(self._hub.rooms.items()):
            for column, count in room.board.counts().items():
                tasks.add_metric([name, column.value], count)
            present = workers_from_states(room.awareness.states())
            for state in ("ready", "working", "draining"):
                workers.add_metric([name, state], sum(1 for w in present if w.state.value == state))
            slots.add_metric([name], sum(w.slots for w in present))
            connections.add_metric([name], room.connections)
            applied.add_metric([name], room.stats.updates_applied)
            refused.add_metric([name], room.stats.updates_refused)
            archived.add_metric([name], room.stats.archived)
        yield from (tasks, workers, slots, connections, applied, refused, archived)

