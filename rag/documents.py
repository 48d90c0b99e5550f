"""Reading documents into blocks: paragraphs, each under the heading path in force.

One reader per format (text, Markdown, HTML, PDF, CSV), chosen by the file's suffix. A reader
keeps the structure the chunker needs (`rag.chunking`): where headings are and where
paragraphs end; it drops what is not text (HTML scripts and styles, Markdown heading marks).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from pydantic import BaseModel

from kanbanmesh.errors import RagError


@dataclass(frozen=True)
class Block:
    """A paragraph (or a code block, a table row, a page's paragraph) and where it sits."""

    text: str
    heading: str = ""  # the heading path in force, "Guide > Install > Linux"; "" before any


HEADING_SEPARATOR = " > "

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")


class _HeadingPath:
    """The stack of headings in force; a heading of level n replaces those of level >= n."""

    def __init__(self) -> None:
        self._levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        self._levels = [(lv, t) for lv, t in self._levels if lv < level]
        if title:
            self._levels.append((level, title))

    @property
    def path(self) -> str:
        return HEADING_SEPARATOR.join(t for _, t in self._levels)


def read_text(raw: str) -> list[Block]:
    """Plain text: paragraphs are separated by blank lines."""
    return [Block(p) for p in _paragraphs(raw)]


def read_markdown(raw: str) -> list[Block]:
    """Markdown: ATX headings (`#` .. `######`) open sections; a fenced code block stays whole."""
    blocks: list[Block] = []
    headings = _HeadingPath()
    lines: list[str] = []
    fence: str | None = None

    def flush() -> None:
        text = "\n".join(lines).strip()
        if text:
            blocks.append(Block(text, headings.path))
        lines.clear()

    for line in raw.splitlines():
        opened = _MD_FENCE.match(line)
        if fence is not None:
            lines.append(line)
            if opened and opened.group(1) == fence:
                fence = None
                flush()
            continue
        if opened:
            flush()
            fence = opened.group(1)
            lines.append(line)
            continue
        heading = _MD_HEADING.match(line)
        if heading:
            flush()
            headings.enter(len(heading.group(1)), heading.group(2).strip())
        elif not line.strip():
            flush()
        else:
            lines.append(line)
    flush()
    return blocks


# Tags that end a paragraph where they open or close.
_HTML_BLOCKS = frozenset(
    {"p", "div", "li", "ul", "ol", "pre", "table", "tr", "br", "section", "article", "blockquote",
     "dd", "dt", "dl", "figcaption", "header", "footer", "main", "nav", "aside", "hr", "form"}
)
_HTML_SKIPPED = frozenset({"script", "style", "noscript", "template", "head"})
_HTML_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HtmlBlocks(HTMLParser):
    """The stdlib parser, tolerant of broken markup, turned into blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._headings = _HeadingPath()
        self._text: list[str] = []
        self._skip = 0
        self._pre = 0
        self._heading_level: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIPPED:
            self._skip += 1
        elif tag in _HTML_HEADINGS:
            self._flush()
            self._heading_level = _HTML_HEADINGS[tag]
        elif tag in _HTML_BLOCKS:
            self._flush()
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag in _HTML_HEADINGS and self._heading_level is not None:
            title = _collapse("".join(self._text))
            self._text.clear()
            self._headings.enter(self._heading_level, title)
            self._heading_level = None
        elif tag in _HTML_BLOCKS:
            self._flush()
            self._pre -= tag == "pre" and self._pre > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._text.append(data)

    def _flush(self) -> None:
        if self._heading_level is not None:
            return  # a block tag inside a heading: the heading's text goes on
        raw = "".join(self._text)
        self._text.clear()
        text = raw.strip("\n") if self._pre else _collapse(raw)
        if text.strip():
            self.blocks.append(Block(text, self._headings.path))

    def close(self) -> None:
        super().close()
        self._heading_level = None
        self._flush()


def read_html(raw: str) -> list[Block]:
    """HTML: `h1`..`h6` open sections; block tags end paragraphs; scripts and styles dropped."""
    parser = _HtmlBlocks()
    parser.feed(raw)
    parser.close()
    return parser.blocks


def read_csv(raw: str) -> list[Block]:
    """CSV: the first row names the columns; every other row is one block, `name: value; ...`."""
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(raw[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(raw), dialect))
    if not rows:
        return []
    header, blocks = [h.strip() for h in rows[0]], []
    for row in rows[1:]:
        cells = [
            f"{header[i] if i < len(header) and header[i] else f'column {i + 1}'}: {value.strip()}"
            for i, value in enumerate(row) if value.strip()
        ]
        if cells:
            blocks.append(Block("; ".join(cells)))
    return blocks


def read_pdf(path: Path, raw: bytes | None = None) -> list[Block]:
    """PDF (pypdf): each page's text, in paragraphs, under the heading `page N`."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as exc:  # the `rag` extra brings pypdf
        raise RagError("rag_unavailable", "reading PDF needs pypdf: pip install 'kanbanmesh[rag]'") from exc
    try:
        reader = PdfReader(path if raw is None else io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, OSError, ValueError, KeyError) as exc:
        raise RagError("unreadable_document", f"cannot read PDF {path}: {exc}") from exc
    return [Block(p, f"page {n}") for n, text in enumerate(pages, start=1) for p in _paragraphs(text)]


_TEXT_READERS: dict[str, Callable[[str], list[Block]]] = {
    ".txt": read_text, ".text": read_text, ".rst": read_text,
    ".md": read_markdown, ".markdown": read_markdown,
    ".html": read_html, ".htm": read_html,
    ".csv": read_csv,
}
SUPPORTED_SUFFIXES = frozenset({*_TEXT_READERS, ".pdf"})


def read_document(path: Path, raw: bytes | None = None) -> list[Block]:
    """The blocks of one file, by `path`'s suffix, from `raw` if given (the bytes already read:
    the file is then not opened again); raises `RagError` for what cannot be read."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return read_pdf(path, raw)
    reader = _TEXT_READERS.get(suffix)
    if reader is None:
        raise RagError("unsupported_document", f"{path}: unsupported file type {suffix or '(none)'!r}")
    data = read_file(path.resolve()) if raw is None else raw
    return reader(data.decode("utf-8", errors="replace"))


def read_file(path: Path) -> bytes:
    """The bytes of the regular file `path`, refusing what is not one (a FIFO would block the
    ingest forever, a device would never end). `path` is meant to be resolved already: its
    last component is opened without following a symlink, so a file swapped for a link after
    the walk approved it is refused, not read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RagError("unreadable_document", f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RagError("unreadable_document", f"cannot read {path}: not a regular file")
        try:
            return file.read()
        except OSError as exc:
            raise RagError("unreadable_document", f"cannot read {path}: {exc.strerror}") from exc


class SkippedPath(BaseModel):
    """Something under a folder given to ingest that was left out, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Document:
    """A file to ingest: `path` as found (its suffix picks the reader), `real` the file it is
    (symlinks resolved): what is read, and what names its chunks."""

    path: Path
    real: Path


@dataclass
class FoundDocuments:
    """What `expand_paths` found: the files to ingest, each once, in order, and what it left
    out on the way (symlinks it did not follow, loops), to report."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[SkippedPath] = field(default_factory=list)
    _seen: set[Path] = field(default_factory=set)

    def add(self, path: Path, real: Path) -> None:
        # The same file reached twice (a link beside its target, a folder given twice) is
        # ingested once: twice would replace its chunks with themselves in one ingest.
        if real not in self._seen:
            self._seen.add(real)
            self.documents.append(Document(path, real))

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(SkippedPath(path=str(path), reason=reason))


def expand_paths(paths: Sequence[Path], *, follow_symlinks: bool = False) -> FoundDocuments:
    """The files to ingest: each file given, and the supported files under each folder given
    (sorted, hidden ones left out).

    A path given is the caller's choice and read wherever it points. Inside a folder, a symlink
    whose target lies outside that folder is skipped (and reported) unless `follow_symlinks`:
    ingesting a folder of someone else's documents must not pull in `~/.ssh` through a link.
    A folder reached twice (a symlink loop, a link to a folder already walked) is walked once.
    """
    found = FoundDocuments()
    for path in paths:
        if path.is_dir():
            _walk(path, follow_symlinks, found)
        elif path.is_file():
            found.add(path, path.resolve())
        else:
            raise RagError("unreadable_document", f"no such file or folder: {path}")
    return found


def _walk(folder: Path, follow_symlinks: bool, found: FoundDocuments) -> None:
    """Depth first, in name order (as `sorted(folder.rglob("*"))` lists). Without recursion (a
    hostile tree as deep as paths allow must not exhaust the interpreter's stack), and with
    each entry's real path carried down rather than resolved (resolving costs a system call
    per level: quadratic in a deep tree)."""
    boundary = folder.resolve()
    walked = {_identity(boundary.stat())}
    pending = [(folder, boundary, _entries(folder, found))]
    while pending:
        parent, real_parent, entries = pending[-1]
        entry = next(entries, None)
        if entry is None:
            pending.pop()
            continue
        path = parent / entry.name
        try:
            if entry.is_symlink():
                real = _follow(path, boundary, follow_symlinks, found)
                if real is None:
                    continue
                info = real.stat()
            else:
                real = real_parent / entry.name
                info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            found.skip(path, f"cannot read: {exc.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            if _identity(info) in walked:
                found.skip(path, "a folder already walked (symlink loop)")
                continue
            walked.add(_identity(info))
            pending.append((path, real, _entries(path, found)))
        elif stat.S_ISREG(info.st_mode) and path.suffix.lower() in SUPPORTED_SUFFIXES:
            found.add(path, real)


def _follow(
    link: Path, boundary: Path, follow_symlinks: bool, found: FoundDocuments
) -> Path | None:
    """The resolved target of the symlink `link`, or None when it is skipped."""
    try:
        real = link.resolve(strict=True)
    except RuntimeError:  # Python 3.11 raises it for a loop of links
        found.skip(link, "symlink loop")
        return None
    except OSError as exc:
        found.skip(link, "symlink loop" if exc.errno == errno.ELOOP else "broken symlink")
        return None
    if not follow_symlinks and not real.is_relative_to(boundary):
        found.skip(link, f"symlink to {real}, outside {boundary} (--follow-symlinks reads it)")
        return None
    return real


def _entries(folder: Path, found: FoundDocuments) -> Iterator[os.DirEntry[str]]:
    """The entries of `folder` but hidden ones, by name."""
    try:
        with os.scandir(folder) as listing:
            entries = [e for e in listing if not e.name.startswith(".")]
    except OSError as exc:
        found.skip(folder, f"cannot list: {exc.strerror}")
        return iter(())
    return iter(sorted(entries, key=lambda e: e.name))


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _paragraphs(raw: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
