"""``isa-explorer zoo``: list, download and remove the released models (ISANet, NonLocalNet,
CCNet, DANet, GCNet, EMANet).

Examples:
    isa-explorer zoo list                   # name, alias, model, dataset, backbone, mIoU, cached
    isa-explorer zoo list --head danet      # one model's entries (mmseg's or the head's name)
    isa-explorer zoo list --aliases         # the short names only
    isa-explorer zoo download cityscapes-danet-r50
    isa-explorer zoo remove cityscapes-danet-r50
    python app.py --checkpoint cityscapes-r50   # any model option takes a zoo name
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from isa_explorer.zoo.cache import fetch, is_cached, remove, zoo_home
from isa_explorer.zoo.entries import ZooEntry, ZooError, entries, get_entry

_COLUMNS = ("name", "alias", "model", "dataset", "backbone", "crop", "test", "mIoU", "ms+flip")
#: Columns of a model's table in docs/mmseg_checkpoints.md (:func:`markdown_table`).
_DOC_COLUMNS = ("name", "alias", "dataset", "backbone", "crop", "iters", "test", "mIoU", "ms+flip")
#: Columns of the README's table of short names (:func:`aliases_table`).
_ALIAS_COLUMNS = ("alias", "model", "dataset", "backbone", "name", "test", "mIoU", "ms+flip")


def short_names(e: ZooEntry) -> list[str]:
    """The entry's short aliases (``cityscapes-r50``, ``cityscapes-isanet-r50``)."""
    return [a for a in e.aliases if "_" not in a]


def select(head: str | None = None, aliased: bool = False) -> list[ZooEntry]:
    """The entries, in the zoo's order.

    Args:
        head: Only this head's: its registry name (``"da"``) or mmseg's model name
            (``"danet"``), any case; ``None`` for all.
        aliased: Only the entries with a short alias.

    Raises:
        ZooError: No entry has that head.
    """
    out = [e for e in entries().values() if not aliased or short_names(e)]
    if head is not None:
        key = head.strip().lower()
        out = [e for e in out if key in (e.head, e.family.model if e.family else e.head)]
        if not out:
            raise ZooError(f"no zoo entry has the head {head!r} (isanet, nonlocal, ccnet, ...)")
    return out


def _fields(e: ZooEntry, cached: bool = False) -> dict[str, str]:
    """An entry's values under every column name of the tables (``cached`` if asked)."""
    out = {
        "name": e.name,
        "alias": ", ".join(short_names(e)),
        "model": e.family.title if e.family else e.head or "",
        "dataset": e.dataset_title,
        "backbone": e.backbone,
        "crop": f"{e.crop[0]}x{e.crop[1]}" if e.crop else "",
        "iters": f"{e.iters // 1000}k" if e.iters else "",
        "test": "whole" if e.test_mode == "whole" else f"slide {e.test_crop[0]}/{e.test_stride[0]}",
        "mIoU": f"{e.miou:.2f}" if e.miou is not None else "",
        "ms+flip": f"{e.miou_ms:.2f}" if e.miou_ms is not None else "-",
    }
    if cached:
        out["cached"] = "yes" if is_cached(e) else ""
    return out


def table_rows(
    cached: bool = True, head: str | None = None, aliased: bool = False
) -> list[list[str]]:
    """One row per entry: :data:`_COLUMNS`, then ``cached`` when ``cached``."""
    columns = (*_COLUMNS, "cached") if cached else _COLUMNS
    return [[_fields(e, cached)[c] for c in columns] for e in select(head, aliased)]


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[str]], code: set[str]) -> str:
    """A markdown table; the values of the ``code`` columns in backticks (each of a list)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [
            ", ".join(f"`{v}`" for v in c.split(", ")) if col in code and c else c
            for col, c in zip(columns, row, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(head: str) -> str:
    """One model's released checkpoints as a markdown table, with their links (the tables of
    docs/mmseg_checkpoints.md)."""
    return _doc_table(select(head))


def _doc_table(selected: Sequence[ZooEntry]) -> str:
    rows = [[*(_fields(e)[c] for c in _DOC_COLUMNS), f"[{e.filename}]({e.url})"] for e in selected]
    return _markdown((*_DOC_COLUMNS, "checkpoint"), rows, {"name", "alias"})


def markdown_tables() -> str:
    """Every model's table under a ``###`` heading naming it (``### DANet (DAHead)``)."""
    groups: dict[str, list[ZooEntry]] = {}
    for e in entries().values():
        groups.setdefault(e.head_title or "Other models", []).append(e)
    return "\n\n".join(f"### {title}\n\n{_doc_table(es)}" for title, es in groups.items())


def aliases_table() -> str:
    """The short names as a markdown table, by dataset, backbone and model (the README's)."""
    datasets = {"cityscapes": 0, "ade20k": 1, "voc": 2}
    backbones = {"R-50-D8": 0, "R-101-D8": 1}
    chosen = select(aliased=True)  # in the zoo's order, which the stable sort keeps per group
    chosen.sort(key=lambda e: (datasets.get(e.dataset or "", 3), backbones.get(e.backbone, 2)))
    rows = [[_fields(e)[c] for c in _ALIAS_COLUMNS] for e in chosen]
    return _markdown(_ALIAS_COLUMNS, rows, {"alias", "name"})


def _plain_table(head: str | None, aliased: bool) -> str:
    columns = (*_COLUMNS, "cached")
    rows = [list(columns), *table_rows(head=head, aliased=aliased)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer zoo") -> int:
    """``list`` / ``download NAME...`` / ``remove NAME...``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="the models: name, alias, model, dataset, mIoU, cached")
    ls.add_argument("--head", help="one model's: isanet, nonlocal, ccnet, danet, gcnet, emanet")
    ls.add_argument("--aliases", action="store_true", help="only the entries with a short name")
    ls.add_argument(
        "--markdown",
        action="store_true",
        help="as markdown: one table per model with links (the docs'), or with --aliases the "
        "README's table of short names",
    )
    get = sub.add_parser("download", help="download and convert (once) into the cache")
    get.add_argument("names", nargs="+")
    get.add_argument("--no-progress", action="store_true")
    rm = sub.add_parser("remove", help="delete cached models")
    rm.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.action == "list" and args.markdown:
            if args.aliases:
                print(aliases_table())
            else:
                print(markdown_table(args.head) if args.head else markdown_tables())
        elif args.action == "list":
            print(_plain_table(args.head, args.aliases))
            print(f"\ncache: {zoo_home() / 'zoo'} (set ISA_EXPLORER_HOME to move it)")
        elif args.action == "download":
            for e in map(get_entry, args.names):
                path = fetch(e, progress=not args.no_progress)
                print(f"{e.name} ({e.title}, mIoU {e.miou}): {path}")
        else:
            for e in map(get_entry, args.names):
                print(f"{e.name}: {'removed' if remove(e) else 'was not cached'}")
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
