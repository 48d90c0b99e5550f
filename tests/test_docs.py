"""The docs against the code, where a machine can tell: README.md and docs/protocol.md name
only flags and environment variables that exist, the close codes, task fields, limits, HTTP
routes and metrics of the code, and only files and sections that exist; no file cites a
document the repository lacks; `kanbanmesh/errors.py` draws the exception tree as it is.

Everything is found through public entry points (the CLI's click group, `Settings`, the board's
constants and schema) or by reading the sources, never by a module's file path, so that moving
a module moves nothing here.
"""

from __future__ import annotations

import ast
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from kanbanmesh import errors
from kanbanmesh.board import constants, schema
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.cli import main
from kanbanmesh.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FLAG_DOCS = [README, PROTOCOL]  # the references of the CLI and of the protocol
ENV_PREFIX = "KANBANMESH_"

# Flags the docs name that belong to other programs (llama-server's, quoted for comparison).
FOREIGN_FLAGS = frozenset({"--slot-prompt-similarity"})
# The commands whose every option is a setting (`Settings`), and so reads a variable.
SETTINGS_COMMANDS = ("up", "serve", "broker", "worker")
# Options of those commands that are no setting.
NOT_SETTINGS = frozenset({"drain_target", "help"})
# What is not the repository's own, when its files are read for citations.
SKIPPED_DIRS = frozenset({".git", ".venv", "node_modules", ".cache", "dist", "static", "__pycache__"})


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# -- the CLI ------------------------------------------------------------------------------


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command of the CLI by its path (`up`, `rag ingest`), groups included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from commands(command, path + " ")


def flags_of(command: click.Command) -> set[str]:
    return {
        opt for param in command.params if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")
    } | {"--help"}


COMMANDS = dict(commands())
ALL_FLAGS = set().union(*(flags_of(c) for c in COMMANDS.values()), flags_of(main), {"--version"})


def setting_options() -> Iterator[tuple[str, str, click.Option]]:
    """(command, flag, option) for every option of the settings commands."""
    for name in SETTINGS_COMMANDS:
        for param in COMMANDS[name].params:
            if isinstance(param, click.Option) and param.name not in NOT_SETTINGS:
                yield name, param.opts[0], param


# -- reading the docs ---------------------------------------------------------------------

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND_LINE = re.compile(r"(?:^|[\s/`])kanbanmesh ((?:[a-z]+)(?: [a-z]+)?)")


def code_snippets(doc: str) -> Iterator[str]:
    """Inline code spans, and the lines of fenced blocks without their `#` comments."""
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
    for block in fenced.findall(doc):
        for line in block.splitlines():
            yield re.split(r"\s#\s", line, maxsplit=1)[0]
    yield from re.findall(r"`([^`\n]+)`", fenced.sub("", doc))


def command_flags(doc: str) -> Iterator[tuple[str, str, str]]:
    """(command, flag, snippet) for the flags written after `kanbanmesh COMMAND` in a snippet."""
    for snippet in code_snippets(doc):
        found = COMMAND_LINE.search(snippet)
        if found is None:
            continue
        words = found.group(1)
        name = words if words in COMMANDS else words.split()[0]
        if name not in COMMANDS:
            continue
        for flag in FLAG.findall(snippet[found.end():]):
            yield name, flag, snippet


def section(doc: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = doc.index(heading + "\n")
    nxt = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(doc, start + len(heading))
    return doc[start:nxt.start() if nxt else len(doc)]


def table_rows(doc: str, header: str) -> list[list[str]]:
    """The cells of the table whose header row starts with `header`."""
    start = doc.index(header)
    rows = []
    for line in doc[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def code_name(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"not one code span: {cell!r}"
    return match.group(1)


# -- flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", FLAG_DOCS, ids=lambda p: p.name)
def test_every_documented_flag_exists(doc: Path) -> None:
    documented = set(FLAG.findall(text(doc)))
    assert documented - ALL_FLAGS - FOREIGN_FLAGS == set()


@pytest.mark.parametrize("doc", FLAG_DOCS, ids=lambda p: p.name)
def test_flags_written_after_a_command_are_that_commands(doc: Path) -> None:
    wrong = {
        f"kanbanmesh {name} {flag}  (in `{snippet.strip()}`)"
        for name, flag, snippet in command_flags(text(doc))
        if flag not in flags_of(COMMANDS[name])
    }
    assert wrong == set()


def test_the_flag_check_reads_commands_and_their_flags() -> None:
    # The parser must see what it is meant to check (or the tests above prove nothing).
    seen = set(command_flags(text(README)))
    assert ("up", "--workers") in {(n, f) for n, f, _ in seen}
    doc = "`kanbanmesh worker --no-such-flag` and `kanbanmesh rag ingest --quiet`"
    found = {(n, f) for n, f, _ in command_flags(doc)}
    assert found == {("worker", "--no-such-flag"), ("rag ingest", "--quiet")}
    assert "--no-such-flag" not in flags_of(COMMANDS["worker"])


# -- environment variables ------------------------------------------------------------------


def variable(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def test_every_documented_environment_variable_exists() -> None:
    sources = "\n".join(text(path) for path in repository_files() if path.suffix in (".py", ".js", ".mjs", ".sh"))
    for doc in FLAG_DOCS:
        for name in set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", text(doc))):
            setting = name[len(ENV_PREFIX):].lower()
            assert setting in Settings.model_fields or name in sources, f"{doc.name}: {name}"


def renamed_options() -> dict[str, str]:
    """The options whose variable is not `KANBANMESH_` + the flag's name: flag -> variable."""
    renamed = {}
    for _, flag, option in setting_options():
        assert option.name in Settings.model_fields, f"{flag} is no setting"
        derived = ENV_PREFIX + flag[2:].replace("-", "_").upper()
        if derived != variable(option.name):
            renamed[flag] = variable(option.name)
    return renamed


def test_readme_names_the_variable_of_every_renamed_option() -> None:
    rows = table_rows(text(README), "| option | variable |")
    documented = {code_name(flag): code_name(var) for flag, var in rows}
    assert documented == renamed_options()


@pytest.mark.parametrize("flag", sorted(renamed_options()))
def test_a_renamed_options_variable_sets_it(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = renamed_options()[flag][len(ENV_PREFIX):].lower()
    kind = Settings.model_fields[setting].annotation
    value, raw = {bool: (False, "false"), int: (7, "7"), float: (7.5, "7.5")}[kind]  # type: ignore[index]
    monkeypatch.setenv(variable(setting), raw)
    assert getattr(Settings(), setting) == value


def test_readme_names_the_variables_of_settings_without_an_option() -> None:
    reachable = {
        param.name for command in COMMANDS.values() for param in command.params
        if isinstance(param, click.Option)
    }
    readme = text(README)
    for setting in set(Settings.model_fields) - reachable:
        assert variable(setting) in readme, setting


# -- close codes ----------------------------------------------------------------------------


def code_close_codes() -> dict[int, str]:
    return {v: k for k, v in vars(constants).items() if k.startswith("CLOSE_") and isinstance(v, int)}


def close_code_rows() -> dict[int, str]:
    """The table of docs/protocol.md's "Close codes": code -> what a client does then."""
    rows = table_rows(section(text(PROTOCOL), "### Close codes"), "| code | meaning |")
    return {int(row[0]): row[-1] for row in rows}


def test_the_documented_close_codes_are_those_of_the_code() -> None:
    # 1000 and 1001 are the ordinary closes, which the table leaves to "any other code".
    assert set(close_code_rows()) == set(code_close_codes()) - {1000, 1001}


def test_what_a_client_does_after_a_close_code_is_what_the_peer_does() -> None:
    rows = close_code_rows()
    assert {code for code, then in rows.items() if then.startswith("**stop**")} == constants.FATAL_CLOSE_CODES
    start_over = {code for code, then in rows.items() if then.startswith("**start over**")}
    assert start_over == constants.REFUSAL_CLOSE_CODES
    snippet = section(text(PROTOCOL), "### Close codes")
    for name, codes in (("START_OVER", constants.REFUSAL_CLOSE_CODES), ("STOP", constants.FATAL_CLOSE_CODES)):
        listed = re.search(rf"const {name} = new Set\(\[([^\]]*)\]\)", snippet)
        assert listed is not None and {int(x) for x in listed.group(1).split(",")} == codes
    for words, codes in (("refusal", constants.REFUSAL_CLOSE_CODES), ("fatal", constants.FATAL_CLOSE_CODES)):
        prose = re.search(rf"\(the {words} codes ([\d,\s]+)\)", snippet)
        assert prose is not None and {int(x) for x in prose.group(1).split(",")} == codes


def test_the_server_closes_with_the_named_codes_only() -> None:
    literal = re.compile(r"close\(\s*\d{4}\b")
    found = [
        f"{path.relative_to(ROOT)}" for path in repository_files(packages_only=True)
        if path.suffix == ".py" and literal.search(text(path))
    ]
    assert found == []


# -- task fields ----------------------------------------------------------------------------


def field_rows() -> dict[str, list[str]]:
    rows = table_rows(section(text(PROTOCOL), "## 2. The board document"), "| field | JS type |")
    return {code_name(row[0]): row for row in rows}


def test_the_documented_task_fields_are_those_of_the_schema() -> None:
    assert set(field_rows()) == set(schema.TaskEntry.model_fields)


def nested_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = nested_model(arg)
            if found is not None:
                return found
    return None


def test_the_documented_keys_of_object_fields_are_those_of_their_models() -> None:
    checked = 0
    for name, row in field_rows().items():
        model = nested_model(schema.TaskEntry.model_fields[name].annotation)
        if model is None:
            continue
        keys = re.fullmatch(r"`\[?\{([^}]*)\}\]?`", row[1])
        assert keys is not None, f"{name}: {row[1]!r} does not spell the keys of {model.__name__}"
        assert {k.strip() for k in keys.group(1).split(",")} == set(model.model_fields), name
        checked += 1
    assert checked >= 8  # messages, params, rag, attempts, error, usage, timings, context, ...


def test_the_documented_writers_of_the_fields_are_the_schemas() -> None:
    writers = {
        "client": schema.REQUEST_FIELDS, "owner": schema.CLIENT_FIELDS,
        "broker": schema.BROKER_FIELDS, "worker": schema.WORKER_FIELDS,
        "server": schema.SERVER_FIELDS,
    }
    rows = field_rows()
    for writer, fields in writers.items():
        documented = {name for name, row in rows.items() if re.search(rf"\b{writer}\b", row[2])}
        assert documented == set(fields), writer


def test_the_documented_limits_are_those_the_server_publishes() -> None:
    rows = table_rows(text(PROTOCOL), "| `meta.limits` field |")
    assert {code_name(row[0]) for row in rows} == set(EntryLimits().to_json())


# -- HTTP routes ----------------------------------------------------------------------------


def served_routes() -> set[str]:
    route = re.compile(r'\b_?[Rr]oute\(\s*"(/[^"]*)"')
    return {
        path for file in repository_files(packages_only=True) if file.suffix == ".py"
        for path in route.findall(text(file)) if ":path" not in path  # catch-alls answer 404
    }


def test_every_http_route_is_documented() -> None:
    def shape(doc: str) -> str:
        return re.sub(r"\{[^{}]*\}", "{}", doc)

    routes = served_routes()
    assert {"/healthz", "/v1/chat/completions"} <= routes  # the reader finds them
    http = shape(section(text(PROTOCOL), "## 8. HTTP on the same port"))
    undocumented = {
        path for path in routes
        if not re.search(rf"[\s`]{re.escape(shape(path))}(?![\w/{{}}])", http)
    }
    assert undocumented == set()


# -- metrics ------------------------------------------------------------------------------


def exported_metrics() -> set[str]:
    made = re.compile(r'(?:Counter|Gauge|Histogram|Summary|GaugeMetricFamily|CounterMetricFamily)\(\s*"(kanbanmesh_\w+)"')
    return {
        name for path in repository_files(packages_only=True) if path.suffix == ".py"
        for name in made.findall(text(path))
    }


def documented_metrics(doc: Path) -> set[str]:
    names = re.findall(r"`(kanbanmesh_[a-z_]+)(?:\{[^}`]*\})?`", text(doc))
    return {name.removesuffix("_total") for name in names}


def test_the_documented_metrics_are_those_the_server_exports() -> None:
    exported = exported_metrics()
    assert len(exported) >= 10  # the reader finds them
    assert documented_metrics(PROTOCOL) == exported
    assert documented_metrics(README) <= exported


# -- the exception tree -------------------------------------------------------------------


def drawn_tree() -> dict[str, str | None]:
    """errors.py's docstring tree: class -> the class it is drawn under."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in block.splitlines():
        match = re.match(r"^( *)((?:[│ ] {3}|[├└]── )*)(\w+)", line)
        assert match is not None, line
        depth = len(match.group(2)) // 4
        del stack[depth:]
        parents[match.group(3)] = stack[-1] if stack else None
        stack.append(match.group(3))
    return parents


def defined_exceptions() -> dict[str, list[str]]:
    """Every class of the packages that derives, directly or not, from `KanbanMeshError`:
    name -> the names of its bases (read from the sources, wherever a module lives)."""
    classes: dict[str, list[str]] = {}
    for path in repository_files(packages_only=True):
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(text(path))):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                classes.setdefault(node.name, bases)
    ours = {"KanbanMeshError"}
    grew = True
    while grew:
        new = {name for name, bases in classes.items() if set(bases) & ours} - ours
        ours |= new
        grew = bool(new)
    return {name: classes[name] for name in ours}


def test_the_exception_tree_is_drawn_as_the_classes_are() -> None:
    drawn = drawn_tree()
    defined = defined_exceptions()
    assert set(drawn) == set(defined)
    for name, parent in drawn.items():
        if parent is not None:
            assert parent in defined[name], f"{name} is drawn under {parent}, derives from {defined[name]}"
    here = {n for n, v in vars(errors).items() if isinstance(v, type) and v.__module__ == errors.__name__}
    assert here <= set(drawn)


def test_the_tree_reader_reads_depth() -> None:
    assert drawn_tree()["UpdateRefusedError"] == "ConnectionClosedError"
    assert drawn_tree()["TaskTooLargeError"] == "InvalidTaskError"
    assert drawn_tree()["StoreError"] == "KanbanMeshError"


# -- cited files and sections ---------------------------------------------------------------


def packages() -> list[str]:
    find = tomllib.loads(text(ROOT / "pyproject.toml"))["tool"]["setuptools"]["packages"]["find"]
    return sorted({name.rstrip("*").rstrip(".") for name in find["include"]})


def repository_files(*, packages_only: bool = False) -> Iterator[Path]:
    """The repository's own text files (no virtualenv, caches, dependencies or builds)."""
    tops = [ROOT / name for name in packages()] if packages_only else [
        p for p in ROOT.iterdir() if not p.name.startswith(".")
    ]
    suffixes = {".py", ".md", ".js", ".mjs", ".sh", ".toml", ".json", ".html", ".css", ".txt", ".cfg"}
    for top in tops:
        candidates = [top] if top.is_file() else top.rglob("*")
        for path in candidates:
            if path.is_file() and path.suffix in suffixes and not SKIPPED_DIRS & set(path.relative_to(ROOT).parts):
                yield path


PATH = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+/?")
# Folders under a server's data directory that the docs name by their layout there.
DATA_PATHS = re.compile(r"^rag/(?!eval/)")


def cited_paths(doc: Path) -> Iterator[tuple[str, Path]]:
    """Repository paths a doc names: relative link targets (from the doc's folder), and code
    spans that start with a top-level entry of the repository (from the root)."""
    body = text(doc)
    for target in re.findall(r"\]\(([^)#\s]+)", body):
        if "://" not in target:
            yield target, (doc.parent / target)
    tops = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    for span in re.findall(r"`([^`\n]+)`", body):
        for path in PATH.findall(span):
            parts = path.split("/")
            built = any(part.startswith(".") or part in SKIPPED_DIRS for part in parts[1:])
            if parts[0] in tops and not DATA_PATHS.match(path) and not built:
                yield path, ROOT / path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_repository_path_exists(doc: Path) -> None:
    missing = {cited for cited, path in cited_paths(doc) if not path.exists()}
    assert missing == set()


def test_no_file_cites_a_document_the_repository_lacks() -> None:
    present = {path.name for path in repository_files()}
    cited = re.compile(r"\b[A-Z][A-Z_]+\.md\b")
    missing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in repository_files() for name in cited.findall(text(path)) if name not in present
    }
    assert missing == set()


def test_cited_protocol_sections_exist() -> None:
    protocol = text(PROTOCOL)
    headings = {m.group(1): m.start() for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", protocol, re.MULTILINE)}

    def exists(number: str, name: str) -> bool:
        if number not in headings:
            return False
        if not name:
            return True
        start = headings[number]
        later = [at for key, at in headings.items() if at > start and "." not in key]
        body = protocol[start:min(later, default=len(protocol))]
        # A sub-heading of the section, or a paragraph's bold title (`**Limits.**`).
        return re.search(rf"(^#+ .*|\*\*){re.escape(name)}", body, re.MULTILINE) is not None

    cite = re.compile(r'protocol\.md,? section (\d+(?:\.\d+)?)(?:, "([^"]+)")?')
    missing = {
        f"{path.relative_to(ROOT)}: section {number} {name}"
        for path in repository_files() for number, name in cite.findall(text(path))
        if not exists(number, name)
    }
    missing |= {f"protocol.md: section {n}" for n in re.findall(r"\bsection (\d+(?:\.\d+)?)\b", protocol)
                if n not in headings}
    assert missing == set()
