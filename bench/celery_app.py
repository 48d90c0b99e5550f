"""Celery application used by the Celery baseline in :mod:`bench.baselines`.

The broker *and* the result backend are the Redis instance named by the
environment variable ``KANBANMESH_BENCH_REDIS_URL`` (e.g.
``redis://127.0.0.1:6390/0``).  The worker is started by
:func:`bench.baselines.run_celery` as::

    python -m celery -A bench.celery_app worker --pool threads --concurrency 4 \
        --without-gossip --without-mingle --without-heartbeat \
        -Q kanbanmesh_bench --loglevel WARNING

The configuration is an ordinary, fair one for short tasks and low latency:
JSON serialisation, early acks (Celery's default), the default prefetch
multiplier, results kept for an hour, no rate limits, no extra events.
Nothing is deliberately slowed down.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

#: Environment variable holding the Redis URL (broker and result backend).
REDIS_URL_ENV = "KANBANMESH_BENCH_REDIS_URL"
#: Used only if the variable is unset (e.g. importing the module in a REPL).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Dedicated queue, so the benchmark never consumes anybody else's tasks.
QUEUE = "kanbanmesh_bench"
#: Registered name of the echo task (identical in worker and client apps).
ECHO_TASK_NAME = "kanbanmesh_bench.echo"


def echo_transform(prompt: str) -> str:
    """The deterministic work done by every baseline: prefix the prompt."""
    return "echo: " + prompt


def create_app(
    redis_url: str, *, main: str = "kanbanmesh_bench", set_as_current: bool = True
) -> Celery:
    """Build a Celery app whose broker and result backend are ``redis_url``.

    The echo task is registered on the new app only (``shared=False``), so
    several apps (e.g. one per benchmark run, each on its own Redis) can live
    in one process without leaking into each other.
    """
    app = Celery(main, broker=redis_url, backend=redis_url, set_as_current=set_as_current)
    app.conf.update(
        # Routing: everything goes to one dedicated queue.
        task_default_queue=QUEUE,
        # Serialisation: plain JSON both ways.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Low-latency, ordinary settings.
        task_acks_late=False,  # Celery's default: ack when the task is received
        worker_prefetch_multiplier=4,  # Celery's default; fine for short tasks
        task_ignore_result=False,  # the client waits on every result
        task_store_eager_result=False,
        result_expires=3600,  # seconds; results are cleaned up after an hour
        result_extended=False,
        task_track_started=False,  # no extra STARTED state round trip
        task_send_sent_event=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=32,  # enough producer connections for many client threads
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )

    @app.task(name=ECHO_TASK_NAME, shared=False)  # type: ignore[untyped-decorator]
    def echo(prompt: str) -> str:
        """Return ``"echo: " + prompt``; no sleep, no I/O."""
        return echo_transform(prompt)

    return app


app: Celery = create_app(os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
#: The echo task of the module-level app (used by the worker process).
echo: Any = app.tasks[ECHO_TASK_NAME]

__all__ = [
    "DEFAULT_REDIS_URL",
    "ECHO_TASK_NAME",
    "QUEUE",
    "REDIS_URL_ENV",
    "app",
    "create_app",
    "echo",
    "echo_transform",
]
