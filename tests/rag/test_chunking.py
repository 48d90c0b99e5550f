"""Reading documents and the chunking policy: pure code, no model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kanbanmesh.errors import RagError
from rag.chunking import ChunkPolicy, chunk_blocks
from rag.documents import Block, read_csv, read_document, read_html, read_markdown
from tests.rag.pdf import write_pdf

MARKDOWN = """# Guide

Intro paragraph.

## Install

Run the installer.

```bash
pip install thing

echo done
```

### Linux

Use apt.

## Usage

Call it.
"""


def test_markdown_keeps_heading_paths_and_whole_code_blocks() -> None:
    blocks = read_markdown(MARKDOWN)
    assert [(b.heading, b.text.splitlines()[0]) for b in blocks] == [
        ("Guide", "Intro paragraph."),
        ("Guide > Install", "Run the installer."),
        ("Guide > Install", "```bash"),
        ("Guide > Install > Linux", "Use apt."),
        ("Guide > Usage", "Call it."),
    ]
    assert "echo done" in blocks[2].text  # the blank line inside the fence did not split it


def test_html_headings_paragraphs_and_no_scripts() -> None:
    html = ("<html><head><title>T</title><style>p{}</style></head><body><h1>Top</h1><p>One\n two</p>"
            "<script>alert(1)</script><h2>Sub <em>part</em></h2><ul><li>a</li><li>b</li></ul></body></html>")
    assert read_html(html) == [Block("One two", "Top"), Block("a", "Top > Sub part"), Block("b", "Top > Sub part")]


def test_csv_rows_name_their_columns() -> None:
    assert read_csv("city,country\nLyon,France\n,\nOsaka,Japan\n") == [
        Block("city: Lyon; country: France"), Block("city: Osaka; country: Japan"),
    ]


def test_pdf_pages_are_read_with_pypdf(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "a.pdf", ["The walrus sleeps on ice.", "Second line."])
    blocks = read_document(path)
    assert blocks and blocks[0].heading == "page 1" and "walrus sleeps on ice" in blocks[0].text


def test_unreadable_and_unsupported_files_raise_rag_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf")
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(RagError) as bad:
        read_document(tmp_path / "bad.pdf")
    assert bad.value.code == "unreadable_document"
    with pytest.raises(RagError) as other:
        read_document(tmp_path / "x.bin")
    assert other.value.code == "unsupported_document"


def test_chunks_stay_within_size_never_cross_headings_and_overlap() -> None:
    sentences = [f"Sentence number {i} says something about topic {i % 7}." for i in range(60)]
    blocks = [Block(" ".join(sentences[:30]), "A"), Block(" ".join(sentences[30:]), "A"), Block("Short.", "B")]
    policy = ChunkPolicy(size=300, overlap=60)
    chunks = chunk_blocks(blocks, policy)
    assert all(len(ch.text) <= 300 for ch in chunks)
    assert [ch.position for ch in chunks] == list(range(len(chunks)))
    assert chunks[-1].heading == "B" and chunks[-1].text == "Short."  # not glued to section A
    section_a = [ch.text for ch in chunks if ch.heading == "A"]
    for before, after in itertools.pairwise(section_a):
        assert after.split()[0] in before.split()[-12:], "consecutive chunks overlap"
    text = " ".join(section_a)
    assert all(f"number {i} " in text for i in range(60)), "nothing is lost"


def test_paragraphs_are_packed_and_token_units_use_the_given_length() -> None:
    blocks = [Block("one two three"), Block("four five"), Block("six seven eight nine")]
    tokens = ChunkPolicy(size=24, overlap=0, unit="tokens")  # 6 "words" of 4 tokens each
    chunks = chunk_blocks(blocks, tokens, length=lambda text: 4 * len(text.split()))
    assert [ch.text for ch in chunks] == ["one two three\n\nfour five", "six seven eight nine"]
    with pytest.raises(ValueError):
        ChunkPolicy(size=100, overlap=100)
