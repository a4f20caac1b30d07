"""Config dataclasses built from (partial) dicts, refusing keys they do not have."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self


class FromDict:
    """Mixin of a config dataclass: :meth:`from_dict`; ``section`` names it in errors."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Self | None) -> Self:
        """From a (partial) dict (``None``: the defaults), or ``d`` itself if it is one already.

        Raises:
            ValueError: Unknown keys, named with the valid ones.
        """
        if isinstance(d, cls):
            return d
        d = dict(d or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown {cls.section} keys {unknown}; valid: {', '.join(valid)}")
        return cls(**d)
