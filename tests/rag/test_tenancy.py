"""Collections belong to boards: a board sees its own only, another board's collection is not
found exactly as a missing one, names cannot leave the data directory, and collections of the
old global layout move to board `default` once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from kanbanmesh.cli import main
from kanbanmesh.errors import RagError
from rag.collection import Collection
from rag.collections import Collections, migrate_global_layout
from rag.embedding import ModelCache

SECRET = "The vault code is 7141 and only the treasurers know it."


def ingest(folder: Path, name: str, text: str, models: ModelCache, docs: Path) -> None:
    """Collection `name` under `folder` (a board's folder, or the old global root), holding `text`."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{name}.md").write_text(f"# {name}\n\n{text}\n")
    with Collection.create(folder, name, models) as collection:
        collection.ingest([docs / f"{name}.md"])


@pytest.fixture
def collections(tmp_path: Path, rag_models: ModelCache) -> Collections:
    """Board `alpha` holds `vault` (the secret); board `beta` holds `notes`."""
    made = Collections(tmp_path / "rag", rag_models)
    ingest(made.folder("alpha"), "vault", SECRET, rag_models, tmp_path / "docs")
    ingest(
        made.folder("beta"),
        "notes",
        "Lunch is served at noon in the canteen.",
        rag_models,
        tmp_path / "docs",
    )
    return made


def not_found(collections: Collections, board: str, name: str) -> RagError:
    with pytest.raises(RagError) as caught:
        collections.get(board, name)
    return caught.value


def test_a_board_sees_and_searches_only_its_own_collections(collections: Collections) -> None:
    assert collections.names("alpha") == ["vault"] and collections.names("beta") == ["notes"]
    assert collections.names("gamma") == [] and [c.name for c in collections.configs("beta")] == [
        "notes"
    ]
    assert "7141" in collections.search("alpha", "vault", "What is the vault code?", 1)[0].text
    other, missing = (
        not_found(collections, "beta", "vault"),
        not_found(collections, "beta", "nothing"),
    )
    assert other.code == missing.code == "collection_not_found"
    assert other.message == missing.message.replace("nothing", "vault"), (
        "nothing tells it exists elsewhere"
    )
    assert "7141" in collections.search("alpha", "vault", "What is the vault code?", 1)[0].text
    collections.close()


@pytest.mark.parametrize(
    "board", ["..", "../alpha", "", "a/b", "/etc", ".migrating", "alpha\n", "a" * 65]
)
def test_board_names_cannot_leave_the_collections_folder(
    collections: Collections, board: str
) -> None:
    with pytest.raises(RagError) as refused:
        collections.get(board, "vault")
    assert refused.value.code == "invalid_board"
    with pytest.raises(RagError):
        collections.names(board)


@pytest.mark.parametrize("name", ["../alpha/vault", "..", "vault\n", "", ".hidden", "a/b"])
def test_collection_names_cannot_leave_the_board_folder(
    collections: Collections, name: str
) -> None:
    with pytest.raises(RagError) as refused:
        collections.get("beta", name)
    assert refused.value.code == "invalid_collection"


def test_old_global_collections_move_to_board_default_once(
    tmp_path: Path, rag_models: ModelCache
) -> None:
    root = tmp_path / "rag"
    ingest(
        root,
        "handbook",
        "New staff get a badge on their first morning.",
        rag_models,
        tmp_path / "docs",
    )
    ingest(
        root, "default", "A collection named like the default board.", rag_models, tmp_path / "docs"
    )
    ingest(
        root / ".migrating",
        "halfway",
        "Left by a migration cut short.",
        rag_models,
        tmp_path / "docs",
    )

    collections = Collections(root, rag_models)
    assert collections.names("team") == []  # the first call migrates, whatever the board
    assert collections.names("default") == ["default", "halfway", "handbook"]
    assert sorted(p.name for p in root.iterdir()) == ["default"]
    assert "badge" in collections.search("default", "handbook", "What do new staff get?", 1)[0].text
    collections.close()
    assert migrate_global_layout(root) == [], "already migrated: nothing moves"
    assert Collections(root, rag_models).names("default") == ["default", "halfway", "handbook"]


def test_cli_collections_belong_to_the_board_they_were_ingested_for(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "vault.md").write_text(f"# Vault\n\n{SECRET}\n")
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    ingest = runner.invoke(
        main,
        [
            "rag",
            "ingest",
            str(docs),
            "--collection",
            "vault",
            "--board",
            "alpha",
            *data,
            "--quiet",
            "--threads",
            "1",
        ],
    )
    assert ingest.exit_code == 0, ingest.output
    assert (tmp_path / "data" / "rag" / "alpha" / "vault" / "collection.json").is_file()

    search = ["rag", "search", "What is the vault code?", "--collection", "vault", *data, "--json"]
    mine = runner.invoke(main, [*search, "--board", "alpha"])
    assert mine.exit_code == 0 and "7141" in json.loads(mine.output)[0]["text"]
    theirs = runner.invoke(main, search)  # the default board
    assert theirs.exit_code == 1 and "no collection 'vault' on board 'default'" in theirs.output
    env = runner.invoke(main, search, env={"KANBANMESH_BOARD": "alpha"})
    assert env.exit_code == 0 and "7141" in env.output
    assert "vault:" in runner.invoke(main, ["rag", "list", "--board", "alpha", *data]).output
    assert runner.invoke(main, ["rag", "list", *data]).output == ""
    bad = runner.invoke(main, [*search, "--board", "../alpha"])
    assert bad.exit_code != 0 and "7141" not in bad.output


@pytest.mark.anyio
async def test_leaving_the_collections_closes_every_collection_they_opened(
    collections: Collections,
) -> None:
    async with collections:
        vault = collections.get("alpha", "vault")
        assert vault.search("What is the vault code?", 1)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        vault.search("What is the vault code?", 1)
    with collections:  # the same lifecycle without an event loop (the `rag` commands)
        notes = collections.get("beta", "notes")
        assert collections.get("beta", "notes") is notes
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        notes.search("lunch", 1)
