"""mmsegmentation's released models by name: ``load_model("cityscapes-danet-r50")``.

ISANet and the five other context heads (NonLocalNet, CCNet, DANet, GCNet, EMANet), 84 models.

:mod:`~isa_explorer.zoo.entries` lists them, :mod:`~isa_explorer.zoo.download` fetches and
verifies a file, :mod:`~isa_explorer.zoo.cache` converts it once and keeps it under
``$ISA_EXPLORER_HOME``; ``isa-explorer zoo list`` prints the table.
"""

from isa_explorer.zoo.cache import fetch, is_cached, model_dir, read_entry, remove, zoo_home
from isa_explorer.zoo.download import DownloadError
from isa_explorer.zoo.entries import ZooEntry, ZooError, entries, find_entry, get_entry

__all__ = [
    "DownloadError",
    "ZooEntry",
    "ZooError",
    "entries",
    "fetch",
    "find_entry",
    "get_entry",
    "is_cached",
    "model_dir",
    "read_entry",
    "remove",
    "zoo_home",
]
