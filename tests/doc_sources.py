"""Where the docs, notebooks and committed results quote code: the sources of
:mod:`test_references` and the snippets and dotted names read from them."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.find_spec("isa_explorer")
assert _SPEC is not None and _SPEC.submodule_search_locations
PACKAGE_DIR = Path(next(iter(_SPEC.submodule_search_locations)))

MARKDOWN = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("results/*.md")])
NOTEBOOKS = sorted(ROOT.glob("notebooks/*.py"))
RESULTS = sorted([*ROOT.glob("results/**/*.json"), *PACKAGE_DIR.glob("assets/results/*.json")])
SOURCES = [*MARKDOWN, *NOTEBOOKS, *RESULTS]
IDS = [str(path.relative_to(ROOT)) for path in SOURCES]

_DOTTED = re.compile(r"(?<![\w./-])isa_explorer(?:\.[A-Za-z_]\w*)+")
_START = re.compile(
    r"(?<![\w./\[-])(?:"
    r"(?P<cli>isa-explorer)(?![\w\[.-])"
    r"|python3? -m (?P<module>isa_explorer(?:\.\w+)*)"
    r"|(?:python3? |torchrun (?:\S+ )*?)(?P<script>[\w.-]+(?:/[\w.-]+)*\.py)\b"
    r"|^(?P<bare>[\w.-]+(?:/[\w.-]+)+\.py)\b"
    r")"
)
_END = re.compile(r"\s#|\||;|&&|>|\"|'|`|\)")
_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|\.\.\.|<.*>)$")
#: Words that follow ``isa-explorer`` in prose ("the isa-explorer command"), not commands.
_PROSE = {"command", "commands"}
_HELP = {"-h", "--help"}
#: Folders of runnable scripts: a quoted ``train/fit.py --list`` is a command too.
_SCRIPT_DIRS = {"train", "benchmarks", "docs"}
#: ``isa-explorer bench NAME`` that became ``python benchmarks/SCRIPT.py``: results recorded
#: before the move keep the command they ran, checked against the script. (``bench decoder``
#: came back into the package: its results are checked against ``isa-explorer bench decoder``.)
_MOVED = {
    "click": "click_latency",
    "synthetic": "synthetic",
    "export": "export",
}
_MOVED_COMMAND = re.compile(rf"^isa-explorer bench ({'|'.join(_MOVED)})\b")


@dataclass(frozen=True)
class Snippet:
    """A piece of code quoted by a source: its text and where it starts."""

    path: Path
    line: int
    text: str

    def where(self) -> str:
        """``path:line``, the path relative to the repository."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


# --- reading the sources ----------------------------------------------------------------------


def _markdown_snippets(path: Path, lines: list[tuple[int, str]]) -> list[Snippet]:
    """Fenced lines (``\\`` continuations joined) and inline code spans of Markdown ``lines``."""
    out: list[Snippet] = []
    prose: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for number, line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append((number, ""))
            continue
        if not fenced:
            prose.append((number, line))
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(Snippet(path, start, pending + line))
        pending, start = "", 0
    text = "\n".join(line for _, line in prose)
    numbers = [number for number, _ in prose]
    for span in re.finditer(r"`([^`]+)`", text):
        if "\n\n" not in span.group(1):
            line = numbers[text.count("\n", 0, span.start())]
            code = " ".join(span.group(1).split())
            out += [Snippet(path, line, text) for text in _alternatives(code)]
    return out


def _alternatives(code: str) -> list[str]:
    """``isa-explorer bench a \\| b`` (a table's escaped ``|``): one command per alternative."""
    first, *others = code.split(" \\| ")
    head = first.rsplit(" ", 1)[0]
    return [first, *(f"{head} {word}" for word in others)]


def _notebook_snippets(path: Path) -> list[Snippet]:
    """A notebook script's comments read as Markdown, each code line as one snippet."""
    comments: list[tuple[int, str]] = []
    out: list[Snippet] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith("#"):
            comments.append((number, stripped[2:] if stripped.startswith("# ") else stripped[1:]))
        else:
            comments.append((number, ""))
            out.append(Snippet(path, number, line))
    return _markdown_snippets(path, comments) + out


def _result_commands(path: Path) -> list[Snippet]:
    """The ``command`` fields of a JSON result, at the line that holds each."""
    text, found = path.read_text(), []

    def keep(obj: dict) -> dict:
        if isinstance(obj.get("command"), str):
            found.append(obj["command"])
        return obj

    json.loads(text, object_hook=keep)
    lines = [text.count("\n", 0, text.find(json.dumps(c))) + 1 for c in found]
    moved = [_MOVED_COMMAND.sub(lambda m: f"python benchmarks/{_MOVED[m[1]]}.py", c) for c in found]
    return [Snippet(path, line, c) for line, c in zip(lines, moved, strict=True)]


def _snippets(path: Path) -> list[Snippet]:
    if path.suffix == ".json":
        return _result_commands(path)
    if path.suffix == ".py":
        return _notebook_snippets(path)
    return _markdown_snippets(path, list(enumerate(path.read_text().splitlines(), 1)))


def _dotted_names(path: Path) -> list[tuple[Snippet, str]]:
    """Every ``isa_explorer.x.y`` of a source (anywhere in its text, or in its commands)."""
    numbered = enumerate(path.read_text().splitlines(), 1)
    text = [Snippet(path, n, line) for n, line in numbered]
    lines = _result_commands(path) if path.suffix == ".json" else text
    return [(s, m.group()) for s in lines for m in _DOTTED.finditer(s.text)]


# --- reading the package ----------------------------------------------------------------------
