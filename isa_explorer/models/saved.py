"""What backward keeps: saved activations that are rebuilt instead of stored.

Autograd keeps, for backward, every tensor an operation needs to compute its gradients. Some of
them cost almost nothing to rebuild from other tensors that backward keeps anyway:

* the output of a conv-BatchNorm-ReLU on tokens, from the convolution's output that BatchNorm
  keeps (one BatchNorm with batch statistics and one ReLU: elementwise work);
* the fused attention's output, which the output projection keeps as its input in another
  layout (one copy).

:class:`RecomputeSaved` is a pair of ``torch.autograd.graph.saved_tensors_hooks``: while it is
active, every tensor an operation saves is held by a small record; when a tensor is registered
with :meth:`RecomputeSaved.register`, the records of it and of its views (made before or after
the registration) drop it and keep a recipe instead, and backward rebuilds it, bit for bit,
when it first unpacks it (shared by the operations that unpack it, freed after the last). It is
the mechanism of ``torch.utils.checkpoint`` applied to single cheap tensors instead of whole
regions, so no matrix product or convolution runs twice.

The decoder uses it in training only (:func:`active`): not under activation checkpointing, which
recomputes whole blocks anyway, and not under ``torch.compile``, whose partitioner chooses its
own recomputation.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable

import torch

_LOCAL = threading.local()  # per thread, as saved-tensor hooks are


def _stack() -> list[RecomputeSaved]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


class _Recipe:
    """How to rebuild one registered tensor; the rebuilt tensor lives while unpacks remain."""

    def __init__(self, rebuild: Callable[[], torch.Tensor]):
        self.rebuild = rebuild
        self.pending = 0  # records that still have to unpack it
        self.value: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.rebuild()
        value = self.value
        self.pending -= 1
        if self.pending <= 0:
            self.value = None
        return value


class _Saved:
    """What autograd holds for one saved tensor: the tensor, or a recipe and the view's
    geometry. Like autograd's own saved variables, it refuses a tensor modified in place."""

    __slots__ = ("tensor", "version", "recipe", "geometry", "__weakref__")

    def __init__(self, t: torch.Tensor):
        self.tensor: torch.Tensor | None = t
        self.version = t._version
        self.recipe: _Recipe | None = None
        self.geometry: tuple | None = None

    def to_recipe(self, recipe: _Recipe) -> None:
        t = self.tensor
        self.geometry = (t.size(), t.stride(), t.storage_offset())
        self.tensor, self.recipe = None, recipe
        recipe.pending += 1

    def unpack(self) -> torch.Tensor:
        if self.recipe is not None:
            size, stride, offset = self.geometry
            return self.recipe.get().as_strided(size, stride, offset)
        if self.tensor._version != self.version:
            raise RuntimeError(
                "a tensor saved for backward was modified in place after it was saved "
                f"(version {self.version} -> {self.tensor._version}); make that operation "
                "out of place"
            )
        return self.tensor


class RecomputeSaved(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks that rebuild registered tensors in backward (see the module doc).

    Example::

        with RecomputeSaved() as saved:
            r = torch.relu(y)            # saves r (its own backward needs it)
            out = r @ w                  # saves r again
            saved.register(r, lambda: torch.relu(y))  # both keep the recipe, not r
    """

    def __init__(self) -> None:
        # Storage address -> records of tensors saved while this context was active.
        self._records: dict[int, list[weakref.ref]] = defaultdict(list)
        self._recipes: dict[int, tuple[weakref.ref, _Recipe]] = {}
        super().__init__(self._pack, _Saved.unpack)

    def __enter__(self) -> RecomputeSaved:
        super().__enter__()
        _stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack().remove(self)
        self._records.clear()
        self._recipes.clear()
        super().__exit__(*exc)

    def register(self, tensor: torch.Tensor, rebuild: Callable[[], torch.Tensor]) -> bool:
        """Keep ``rebuild`` instead of ``tensor`` (and its views) wherever backward saves them.

        ``rebuild()`` must return a contiguous tensor equal to ``tensor`` from tensors backward
        keeps anyway. Only a tensor that owns its whole storage (contiguous, offset 0) can be
        registered; for any other, nothing changes.

        Returns:
            Whether ``tensor`` was registered.
        """
        storage = tensor.untyped_storage()
        whole = tensor.numel() * tensor.element_size() == storage.nbytes()
        # Meta tensors (FLOP counting) have no addresses to tell them apart.
        if tensor.device.type == "meta" or storage.data_ptr() == 0:
            return False
        if not (tensor.is_contiguous() and tensor.storage_offset() == 0 and whole):
            return False
        ptr, recipe = storage.data_ptr(), _Recipe(rebuild)
        self._recipes[ptr] = (weakref.ref(tensor), recipe)
        for ref in self._records.pop(ptr, []):
            record = ref()
            if record is not None and record.tensor is not None:
                record.to_recipe(recipe)
        return True

    def _pack(self, t: torch.Tensor) -> _Saved:
        record = _Saved(t)
        observed = getattr(_LOCAL, "observed", None)
        if observed is not None:  # kept_for_backward is counting
            observed.append((record, t.grad_fn.name() if t.grad_fn is not None else "input"))
        ptr = t.untyped_storage().data_ptr()
        if ptr == 0:  # meta or empty: nothing to tell apart, nothing to save
            return record
        registered = self._recipes.get(ptr)
        # A live registered tensor owns its address; a dead one's address may be reused.
        if registered is not None and registered[0]() is not None:
            record.to_recipe(registered[1])
        else:
            self._records[ptr].append(weakref.ref(record))
        return record


def current() -> RecomputeSaved | None:
    """The innermost active :class:`RecomputeSaved`, if any."""
    stack = _stack()
    return stack[-1] if stack else None


def active(module: torch.nn.Module) -> bool:
    """Whether ``module`` should rebuild cheap saved tensors: training with autograd, not under
    ``torch.compile``."""
    return module.training and torch.is_grad_enabled() and not torch.compiler.is_compiling()


def kept_for_backward(module: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Bytes autograd keeps for backward after ``module(*inputs)``, by the operation whose
    output each kept tensor is (``"input"`` for leaves): what :class:`RecomputeSaved` keeps
    included, what it rebuilds not. Each storage counts once; the module's parameters and
    ``inputs`` are left out. For measuring and testing memory (exact, unlike a process's RSS).
    """
    kept: dict[int, tuple[int, str]] = {}
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip.update(x.untyped_storage().data_ptr() for x in inputs)

    def note(t: torch.Tensor, holder: str) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            kept.setdefault(storage.data_ptr(), (storage.nbytes(), holder))

    def pack(t: torch.Tensor) -> torch.Tensor:  # what is saved outside RecomputeSaved
        note(t, t.grad_fn.name() if t.grad_fn is not None else "input")
        return t

    _LOCAL.observed = observed = []
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(*inputs)
    finally:
        del _LOCAL.observed
    for record, holder in observed:
        if record.tensor is not None:  # kept, not rebuilt
            note(record.tensor, holder)
    by: dict[str, int] = {}
    for nbytes, holder in kept.values():
        by[holder] = by.get(holder, 0) + nbytes
    return by
