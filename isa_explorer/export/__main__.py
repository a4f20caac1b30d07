"""``python -m isa_explorer.export MODEL OUT``: the same as ``isa-explorer export``."""

import sys

from isa_explorer.export.cli import main

sys.exit(main(prog="python -m isa_explorer.export"))
