"""``isa-explorer zoo``: list, download and remove the released ISANet models.

Examples:
    isa-explorer zoo list                   # name, dataset, backbone, crop, mIoU, cached
    isa-explorer zoo download cityscapes-r50
    isa-explorer zoo remove cityscapes-r50
    python app.py --checkpoint cityscapes-r50   # any model option takes a zoo name
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from isa_explorer.zoo.cache import fetch, is_cached, remove, zoo_home
from isa_explorer.zoo.entries import ZooError, entries, get_entry

_COLUMNS = ("name", "alias", "dataset", "backbone", "crop", "test", "mIoU", "ms+flip", "cached")


def table_rows(cached: bool = True) -> list[list[str]]:
    """One row per entry: :data:`_COLUMNS` (``cached`` left out when ``False``)."""
    rows = []
    for e in entries().values():
        short = next((a for a in e.aliases if "_" not in a), "")
        row = [
            e.name,
            short,
            e.dataset_title,
            e.backbone,
            f"{e.crop[0]}x{e.crop[1]}" if e.crop else "",
            "whole" if e.test_mode == "whole" else f"slide {e.test_crop[0]}/{e.test_stride[0]}",
            f"{e.miou:.2f}" if e.miou is not None else "",
            f"{e.miou_ms:.2f}" if e.miou_ms is not None else "",
        ]
        if cached:
            row.append("yes" if is_cached(e) else "")
        rows.append(row)
    return rows


def markdown_table() -> str:
    """The zoo as a markdown table (the README's, without the cache column)."""
    head = _COLUMNS[:-1]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += [
        "| " + " | ".join(f"`{c}`" if i < 2 and c else c for i, c in enumerate(r)) + " |"
        for r in table_rows(cached=False)
    ]
    return "\n".join(lines)


def _plain_table() -> str:
    rows = [list(_COLUMNS), *table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer zoo") -> int:
    """``list`` / ``download NAME...`` / ``remove NAME...``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="the models: name, dataset, backbone, crop, mIoU, cached")
    ls.add_argument("--markdown", action="store_true", help="as a markdown table")
    get = sub.add_parser("download", help="download and convert (once) into the cache")
    get.add_argument("names", nargs="+")
    get.add_argument("--no-progress", action="store_true")
    rm = sub.add_parser("remove", help="delete cached models")
    rm.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            print(markdown_table() if args.markdown else _plain_table())
            if not args.markdown:
                print(f"\ncache: {zoo_home() / 'zoo'} (set ISA_EXPLORER_HOME to move it)")
        elif args.action == "download":
            for e in map(get_entry, args.names):
                path = fetch(e, progress=not args.no_progress)
                print(f"{e.name} ({e.dataset_title}, {e.backbone}, mIoU {e.miou}): {path}")
        else:
            for e in map(get_entry, args.names):
                print(f"{e.name}: {'removed' if remove(e) else 'was not cached'}")
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
