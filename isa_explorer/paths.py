"""Where ISA Explorer keeps files of its own: ``$ISA_EXPLORER_HOME`` (default
``~/.cache/isa_explorer``) holds the zoo's models (``zoo/``, ``downloads/``) and the cached
results of data checks (``data_checks/``)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ISA_EXPLORER_HOME"


def home() -> Path:
    """``$ISA_EXPLORER_HOME``, else ``~/.cache/isa_explorer`` (not created here)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "isa_explorer").expanduser()
