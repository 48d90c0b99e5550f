"""Walking the folders given to ingest: a symlink that leads out of the folder is skipped, and
reported, unless the user asks to follow it; loops end; a path given is always read."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kanbanmesh.cli import main
from kanbanmesh.errors import RagError
from rag.documents import FoundDocuments, expand_paths, read_file


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """`docs/` with a document, links inside it, links out of it, broken links and loops; its
    neighbour `outside/` holds what must not be read without --follow-symlinks."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.md").write_text("# Keys\n\nThe launch code is 0451.\n")
    (outside / "sub" / "deep.md").write_text("# Deep\n\nThe cellar key hangs by the stove.\n")
    (outside / "sub" / "around").symlink_to(outside)  # a loop through outside/ once followed
    docs = tmp_path / "docs"
    (docs / "nested").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\nBackups run every night at two o'clock.\n")
    (docs / "alias.md").symlink_to("guide.md")  # inside the folder: read, once
    (docs / "secret.md").symlink_to(outside / "secret.md")
    (docs / "shelf").symlink_to(outside / "sub")
    (docs / "sneaky.md").symlink_to("nested/../../outside/secret.md")  # relative, still out
    (docs / "loop").symlink_to(docs)
    (docs / "nested" / "up").symlink_to("..")
    (docs / "self.md").symlink_to("self.md")
    (docs / "gone.md").symlink_to(tmp_path / "nowhere.md")
    return docs


def reasons(found: FoundDocuments, docs: Path) -> dict[str, str]:
    """Why each path was left out, by its path under `docs`."""
    return {str(Path(s.path).relative_to(docs)): s.reason for s in found.skipped}


def test_links_out_of_the_folder_are_skipped_with_their_reason(docs: Path, tmp_path: Path) -> None:
    found = expand_paths([docs])
    assert [d.real for d in found.documents] == [(docs / "guide.md").resolve()]
    skipped = reasons(found, docs)
    assert set(skipped) == {
        "secret.md",
        "shelf",
        "sneaky.md",
        "loop",
        "nested/up",
        "self.md",
        "gone.md",
    }
    for link in ("secret.md", "shelf", "sneaky.md"):
        assert "outside" in skipped[link] and "--follow-symlinks" in skipped[link]
    assert (
        "loop" in skipped["loop"]
        and "loop" in skipped["nested/up"]
        and "loop" in skipped["self.md"]
    )
    assert skipped["gone.md"] == "broken symlink"


def test_follow_symlinks_reads_outside_and_still_ends_on_loops(docs: Path, tmp_path: Path) -> None:
    found = expand_paths([docs], follow_symlinks=True)
    outside = (tmp_path / "outside").resolve()
    assert sorted(d.real for d in found.documents) == sorted(
        [(docs / "guide.md").resolve(), outside / "secret.md", outside / "sub" / "deep.md"]
    )
    skipped = reasons(found, docs)
    assert {"loop", "nested/up", "self.md", "gone.md", "shelf/around/sub"} <= set(skipped)
    assert not any("outside" in reason for reason in skipped.values())


def test_a_path_given_is_read_wherever_it_points(docs: Path, tmp_path: Path) -> None:
    found = expand_paths([docs / "secret.md", docs / "shelf"])
    assert [d.real for d in found.documents] == [
        (tmp_path / "outside" / "secret.md").resolve(),
        (tmp_path / "outside" / "sub" / "deep.md").resolve(),
    ]
    with pytest.raises(RagError) as missing:
        expand_paths([docs / "gone.md"])
    assert missing.value.code == "unreadable_document"


def test_a_deep_tree_is_walked_without_recursion(tmp_path: Path) -> None:
    folder = current = tmp_path / "deep"
    folder.mkdir()
    for _ in range(300):
        current = current / "d"
        current.mkdir()
    (current / "bottom.md").write_text("found")
    # A walk that recursed per level would need 300 frames more than this test has: a tree as
    # deep as paths allow (~2,000 levels) would exhaust the default limit the same way. (Not
    # that deep here: pytest's own cleanup, shutil.rmtree, recurses per level.)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 100)
    try:
        found = expand_paths([folder])
    finally:
        sys.setrecursionlimit(limit)
    assert [d.path.name for d in found.documents] == ["bottom.md"]


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    assert expand_paths([tmp_path]).documents == []
    with pytest.raises(RagError) as refused:
        read_file(fifo)
    assert "not a regular file" in refused.value.message
    (tmp_path / "real.md").write_text("x")
    (tmp_path / "link.md").symlink_to(tmp_path / "real.md")
    with pytest.raises(RagError):
        read_file(tmp_path / "link.md")  # what is read was resolved first: a link here is a swap


def test_cli_ingest_reports_the_skipped_links_and_follows_them_when_asked(
    docs: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = [
        "--collection",
        "notes",
        "--data-dir",
        str(tmp_path / "data"),
        "--quiet",
        "--threads",
        "1",
    ]
    plain = runner.invoke(main, ["rag", "ingest", str(docs), *base])
    assert plain.exit_code == 0, plain.output
    assert f"skipped {docs / 'secret.md'}: symlink to" in plain.output
    assert "notes: 1 file(s): 1 ingested" in plain.output
    search = [
        "rag",
        "search",
        "What is the launch code?",
        "--collection",
        "notes",
        "--data-dir",
        str(tmp_path / "data"),
        "-k",
        "5",
    ]
    assert "0451" not in runner.invoke(main, search).output

    followed = runner.invoke(main, ["rag", "ingest", str(docs), *base, "--follow-symlinks"])
    assert followed.exit_code == 0, followed.output
    assert "notes: 3 file(s): 2 ingested, 1 unchanged" in followed.output
    assert f"skipped {docs / 'secret.md'}" not in followed.output
    assert "0451" in runner.invoke(main, search).output
