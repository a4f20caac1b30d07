"""Every module, command and option that the docs, notebooks and committed results name exists.

The README, ``docs/*.md``, the notebooks' scripts, ``results/*.md`` and the ``command`` fields
of the committed JSON results name dotted names ``isa_explorer.a.b[.attr]`` (each must be a
module of the package or an attribute of one) and command lines: ``isa-explorer CMD [SUB]``,
``python -m isa_explorer[.mod]``, ``python app.py``, ``python train/X.py``, ``torchrun ...
train/X.py``, ``python docs|benchmarks/...py``. Each script must exist, each command must be in
its dispatcher's table (``COMMANDS``, ``BENCHMARKS``, ``EXPERIMENTS``) or its parser's
subparsers, and each ``--option`` must be one its parser adds. The package is read with
:mod:`ast`, so neither torch nor gradio nor a model is imported.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

import pytest
from doc_sources import (
    _END,
    _HELP,
    _PLACEHOLDER,
    _PROSE,
    _SCRIPT_DIRS,
    _START,
    IDS,
    PACKAGE_DIR,
    ROOT,
    SOURCES,
    Snippet,
    _dotted_names,
    _snippets,
)


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` of the package (``None``: no such module)."""
    parts = name.split(".")
    if parts[0] != "isa_explorer":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    candidates = [base / "__init__.py", *([base.with_suffix(".py")] if len(parts) > 1 else [])]
    return next((c for c in candidates if c.is_file()), None)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _bound_names(body: list[ast.stmt]) -> set[str]:
    """Names that statements bind at their own level (into ``if``/``try`` blocks)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names |= set(ast.literal_eval(node.value))  # lazy names (PEP 562)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                names |= _bound_names(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                names |= _bound_names(handler.body)
    return names


def _unresolved(name: str) -> str | None:
    """Why dotted ``name`` names neither a module nor an attribute (``None``: it resolves)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:cut]))
        if path is not None:
            break
    module, rest = ".".join(parts[:cut]), parts[cut:]
    if not rest:
        return None
    body = _tree(path).body
    if rest[0] not in _bound_names(body):
        return f"{name}: module {module} has no {rest[0]!r}"
    classes = {n.name: n for n in body if isinstance(n, ast.ClassDef)}
    if len(rest) < 2 or rest[0] not in classes or rest[1] in _members(classes[rest[0]]):
        return None
    if classes[rest[0]].bases:  # perhaps inherited: only the class itself knows
        cls = getattr(importlib.import_module(module), rest[0])
        if hasattr(cls, rest[1]):
            return None
    return f"{name}: class {module}.{rest[0]} has no {rest[1]!r}"


def _members(cls: ast.ClassDef) -> set[str]:
    """What a class's own source defines: its body's names and the ``self.x`` it assigns."""
    stores = [n for n in ast.walk(cls) if isinstance(n, ast.Attribute)]
    assigned = {
        n.attr for n in stores if isinstance(n.ctx, ast.Store) and ast.unparse(n.value) == "self"
    }
    return _bound_names(cls.body) | assigned


def _main_source(path: Path) -> Path:
    """The module whose ``main`` a script or ``__main__`` runs (``path`` if it defines one)."""
    tree = _tree(path)
    if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
        return path
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    found = [_module_file(n.module or "") for n in imports if "main" in {a.name for a in n.names}]
    return _main_source(found[0]) if found and found[0] else path


def _table(path: Path) -> dict[str, tuple[str, str]] | None:
    """The ``name -> (module, text)`` table a dispatcher module hands to ``dispatch``."""
    called = {ast.unparse(c.args[0]) for c in _calls(_tree(path), "dispatch") if c.args}
    for node in _tree(path).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id in called:
                return ast.literal_eval(node.value)
    return None


def _option_strings(call: ast.Call, loops: dict[str, set[str]]) -> set[str]:
    """The option strings of an ``add_argument`` call (``loops``: a loop variable's values)."""
    found = {str(a.value) for a in call.args if isinstance(a, ast.Constant)}
    named = [loops.get(a.id, set()) for a in call.args if isinstance(a, ast.Name)]
    return {f for f in found if f.startswith("-")}.union(*named)


def _loop_values(tree: ast.AST) -> dict[str, set[str]]:
    """``for flag, ... in (("--a", ...), ...)``: the option strings each loop variable takes."""
    values: dict[str, set[str]] = {}
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For) or not isinstance(loop.iter, ast.Tuple | ast.List):
            continue
        names = loop.target.elts if isinstance(loop.target, ast.Tuple) else [loop.target]
        for i, name in enumerate(names):
            items = [
                v.elts[i] if isinstance(v, ast.Tuple | ast.List) else v for v in loop.iter.elts
            ]
            flags = {str(v.value) for v in items if isinstance(v, ast.Constant)}
            if isinstance(name, ast.Name):
                values.setdefault(name.id, set()).update(f for f in flags if f.startswith("-"))
    return values


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    """The calls of ``name(...)`` or ``x.name(...)`` under ``node``."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
    return [c for c in calls if getattr(c.func, "attr", getattr(c.func, "id", None)) == name]


@cache
def _parser(path: Path) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """The options of a module's parser, and each subcommand's own options.

    Options come from the module's ``add_argument`` calls and from those of the functions it
    imports from the package (``add_inference_arguments``); a call on a variable bound to
    ``add_parser("NAME")`` adds to subcommand ``NAME``.
    """
    tree = _tree(path)
    subparsers = {
        target.id: ast.literal_eval(node.value.args[0])  # type: ignore[attr-defined]
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and node.value in _calls(node, "add_parser")
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    common, subs = set(_HELP), {name: set() for name in subparsers.values()}
    loops = _loop_values(tree)
    for call in _calls(tree, "add_argument"):
        receiver = call.func.value  # type: ignore[attr-defined]
        if isinstance(receiver, ast.Name) and receiver.id in subparsers:
            subs[subparsers[receiver.id]] |= _option_strings(call, loops)
        else:
            common |= _option_strings(call, loops)
    for node in [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]:
        source, wanted = _module_file(node.module or ""), {a.name for a in node.names}
        for fn in _tree(source).body if source else []:
            if isinstance(fn, ast.FunctionDef) and fn.name in wanted:
                common.update(
                    *(_option_strings(c, _loop_values(fn)) for c in _calls(fn, "add_argument"))
                )
    return frozenset(common), {k: frozenset(v) for k, v in subs.items()}


# --- checking commands ------------------------------------------------------------------------


def _command_errors(path: Path, tokens: list[str], label: str) -> list[str]:
    """Follow ``tokens`` through the dispatchers from ``path``; check (sub)commands, options."""
    extra = {"--version"} if label == "isa-explorer" else set()
    path = _main_source(path)
    while (table := _table(path)) is not None:
        if not tokens or tokens[0].startswith("-"):
            bad = [t for t in tokens if t.startswith("--") and t not in _HELP | extra]
            return [f"{label}: unknown option {t}" for t in bad]
        word = tokens[0] if _PLACEHOLDER.match(tokens[0]) else tokens[0].rstrip(",.:;")
        if _PLACEHOLDER.match(word) or (label == "isa-explorer" and word in _PROSE):
            return []
        if word not in table:
            return [f"{label}: unknown command {word!r} (choose from {', '.join(table)})"]
        source = _module_file(table[word][0])
        if source is None:
            return [f"{label} {word}: module {table[word][0]} does not exist"]
        path, label, tokens, extra = _main_source(source), f"{label} {word}", tokens[1:], set()
    common, subs = _parser(path)
    allowed = common
    words = [t for t in tokens if not t.startswith("-")]
    if subs and words and not _PLACEHOLDER.match(words[0]):
        if words[0] not in subs:
            return [f"{label}: unknown subcommand {words[0]!r} (choose from {', '.join(subs)})"]
        allowed, label = common | subs[words[0]], f"{label} {words[0]}"
    options = [t.split("=")[0].rstrip(",.:;") for t in tokens if t.startswith("--") and t != "--"]
    return [f"{label}: unknown option {o}" for o in options if o not in allowed]


def _snippet_errors(snippet: Snippet) -> list[str]:
    """The unresolved commands, scripts and options of one snippet."""
    errors: list[str] = []
    starts = list(_START.finditer(snippet.text))
    for i, match in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(snippet.text)
        rest = snippet.text[match.end() : stop]
        end = _END.search(rest)
        tokens = (rest[: end.start()] if end else rest).split()
        if match["cli"]:
            found = _command_errors(PACKAGE_DIR / "cli.py", tokens, "isa-explorer")
        elif match["module"]:
            module = match["module"]
            source = _module_file(module)
            if source is not None and source.name == "__init__.py":
                source = source.with_name("__main__.py")
            if source is None or not source.is_file():
                found = [f"python -m {module}: no such module (or no __main__.py)"]
            elif '__name__ == "__main__"' not in source.read_text() and source.stem != "__main__":
                found = [f"python -m {module}: the module does not run as a script"]
            else:
                found = _command_errors(source, tokens, f"python -m {module}")
        elif match["bare"] and not (
            snippet.path.suffix == ".json" or match["bare"].split("/")[0] in _SCRIPT_DIRS
        ):
            continue  # a path, not a command: only a result's command starts with any script
        else:
            script = match["script"] or match["bare"]
            if not (ROOT / script).is_file():
                found = [f"{script}: no such file"]
            else:
                found = _command_errors(ROOT / script, tokens, f"python {script}")
        errors += [f"{snippet.where()}: {e}" for e in found]
    return errors


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_dotted_names_resolve(path: Path) -> None:
    errors = [f"{s.where()}: {e}" for s, name in _dotted_names(path) if (e := _unresolved(name))]
    assert not errors, "names that are neither a module nor an attribute:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", SOURCES, ids=IDS)
def test_commands_resolve(path: Path) -> None:
    errors = [e for snippet in _snippets(path) for e in _snippet_errors(snippet)]
    assert not errors, "commands that do not run as written:\n" + "\n".join(errors)


def test_the_scan_sees_the_references() -> None:
    """The readers find what the sources are known to hold (a scan that finds nothing passes)."""
    names = {name for path in SOURCES for _, name in _dotted_names(path)}
    assert {"isa_explorer.attention", "isa_explorer.experiments.context.run_experiment"} <= names
    snippets = [snippet for path in SOURCES for snippet in _snippets(path)]
    starts = [match for snippet in snippets for match in _START.finditer(snippet.text)]
    kinds = {kind for match in starts for kind, value in match.groupdict().items() if value}
    assert kinds == {"cli", "module", "script", "bare"}
    assert len(starts) > 50
    assert _unresolved("isa_explorer.no_such_module") is not None
    assert _snippet_errors(Snippet(ROOT / "README.md", 1, "isa-explorer bench attention --nope"))
    assert not _snippet_errors(Snippet(ROOT / "README.md", 1, "isa-explorer zoo list --markdown"))
    script = "python benchmarks/click_latency.py --clicks 30 --threads 2"
    assert not _snippet_errors(Snippet(ROOT / "README.md", 1, script))
    assert _snippet_errors(Snippet(ROOT / "README.md", 1, script + " --nope"))
    bench = "isa-explorer bench decoder --mode train --rounds 2 --paths isa-fused --no-plot"
    assert not _snippet_errors(Snippet(ROOT / "README.md", 1, bench))
    assert _snippet_errors(Snippet(ROOT / "README.md", 1, bench + " --nope"))
