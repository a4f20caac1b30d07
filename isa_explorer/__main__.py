"""``python -m isa_explorer COMMAND [ARGS]``: the same as ``isa-explorer``."""

import sys

from isa_explorer.cli import main

sys.exit(main())
