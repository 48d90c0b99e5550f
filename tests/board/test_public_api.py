"""The public surface of each package: what `from package import *` gives is a decision.

Adding to or removing from a package's `__all__` changes what users may rely on; this test makes
such a change deliberate (update the list here) and checks that every exported name exists.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC_API = {
    "client_sdk": {
        "AsyncClient", "BoardRotatedError", "BoardSnapshot", "ChatMessage", "Citation", "Client", "Column", "ConnectError",
        "ConnectionClosedError", "EmbedResult", "InvalidTaskError", "KanbanMeshError", "MessageTooLargeError",
        "RagSpec", "StreamRestartedError", "SyncTaskHandle", "TaskCancelledError", "TaskEntry",
        "TaskFailedError", "TaskHandle", "TaskNotFoundError", "TaskParams", "TaskStatus", "TaskTooLargeError",
        "Timings", "TransportError", "UpdateRefusedError", "Usage", "WorkerPresence",
        "WorkerState", "result_ref",
    },
    "broker": {
        "BoardView", "Broker", "BrokerSettings", "BrokerStats", "PeerView", "QueuedTask",
        "RetryPolicy", "TodoQueue", "leader_id", "plan",
    },
    "worker": {"Worker", "WorkerSettings"},
    "awareness": {
        "AwarenessConflictError", "AwarenessRegistry", "PeerPresence", "PeerRole", "WorkerPresence",
        "WorkerState", "workers_from_states",
    },
    "kanbanmesh": {"__version__"},
    "rag": {
        "BatchEmbedder", "Block", "Chunk", "ChunkPolicy", "Collection", "Collections", "DEFAULT_MODEL",
        "Embedder", "EvalQuestion", "EvalReport", "IndexKind", "IndexSettings", "IngestProgress",
        "IngestReport", "ModelCache", "RetrievalMiddleware", "SearchHit", "SpreadOptions",
        "VectorIndex", "chunk_blocks", "evaluate", "ingest_spread", "load_questions", "read_document",
    },
    "kanbanmesh.pipeline": {"FieldReader", "HistoryMiddleware", "Middleware", "PendingTask"},
    "kanbanmesh.wire": {"BoardKpis", "ConversationSummary", "Distribution", "PromptCache", "Turn", "kpis"},
}


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_package_exports_exactly_its_public_names(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert exported == PUBLIC_API[package], (
        f"{package}.__all__ changed: added {sorted(exported - PUBLIC_API[package])}, "
        f"removed {sorted(PUBLIC_API[package] - exported)}"
    )
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def test_sdk_errors_form_one_tree() -> None:
    import client_sdk

    errors = [getattr(client_sdk, name) for name in client_sdk.__all__ if name.endswith("Error")]
    assert errors and all(issubclass(e, client_sdk.KanbanMeshError) for e in errors)
