"""ISA Explorer's browser app: ``python app.py [--checkpoint DIR] [--host] [--port] [--share]``.

The same as ``isa-explorer app``; the app lives in :mod:`isa_explorer.explorer.app`.
"""

import sys

from isa_explorer.explorer.app import main

if __name__ == "__main__":
    sys.exit(main(prog="python app.py"))
