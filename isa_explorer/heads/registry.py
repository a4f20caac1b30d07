"""The registry of heads: name -> :class:`~isa_explorer.heads.protocol.Head` subclass."""

from __future__ import annotations

from torch import nn

from isa_explorer.heads.protocol import Head

_REGISTRY: dict[str, type[Head]] = {}


def register(cls: type[Head]) -> type[Head]:
    """Register a head class under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: No name, or the name taken by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute `name`")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"head name {cls.name!r} is taken by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a registered head (tests that register heads of their own)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """The registered head names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> type[Head]:
    """The head class registered as ``name``.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}: choose from {', '.join(_REGISTRY)}") from None


def of(module: nn.Module) -> type[Head]:
    """The head class of a model (its ``decoder``) or of a head module.

    Raises:
        ValueError: Neither a registered head nor a model with one.
    """
    head = getattr(module, "decoder", module)
    cls = type(head)
    if not isinstance(head, Head) or _REGISTRY.get(cls.name) is not cls:
        raise ValueError(f"{cls.__name__} is not a registered head ({', '.join(_REGISTRY)})")
    return cls


def with_attention() -> list[str]:
    """Names of the registered heads that have attention maps."""
    return [n for n, cls in _REGISTRY.items() if cls.maps]


# The built-in heads register themselves on import.
