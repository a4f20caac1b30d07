"""``python -m isa_explorer.zoo list``: the same as ``isa-explorer zoo list``."""

import sys

from isa_explorer.zoo.cli import main

sys.exit(main(prog="python -m isa_explorer.zoo"))
