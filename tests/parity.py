"""Numerical parity with a reference implementation, judged the way fp32 behaves.

Two float32 implementations of one network (mmsegmentation's and ours, or ours on two oneDNN
builds) sum in different orders, so they agree only up to rounding, and that rounding grows
with the logits' magnitude and the network's depth. A fixed ``atol`` that holds on one build
fails on the next. Instead :func:`compare_to_reference`:

1. evaluates *our* model in float64 on the same weights and inputs: the exact function the
   weights define, up to ``~1e-16`` relative;
2. measures what float32 rounding costs in *this* build: ``fp32_error = max |ours_fp32 -
   ours_fp64|``;
3. accepts the reference (another float32 evaluation of the same function) when it lies within
   ``FACTOR x max(fp32_error, FLOOR_ULPS x eps32 x scale)`` of the float64 result, where
   ``scale = max |logits|``.

``FACTOR`` allows the reference's own rounding to be a few times ours (another library, another
summation order); the floor keeps the check from tightening below a few float32 ulps of the
logits on a build whose rounding happens to cancel. The tolerance stays far below any real
defect: a wrong weight mapping, a missing BatchNorm or padding on the wrong side moves the
logits by a sizeable fraction of ``scale`` (``tests/test_convert.py`` shows each fails).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FACTOR", "FLOOR_ULPS", "Parity", "compare_to_reference", "fp64_reference"]

#: How many times our own float32 rounding the reference may deviate from the float64 result.
FACTOR = 4.0
#: The tolerance never drops below this many float32 ulps of the logits' largest magnitude.
FLOOR_ULPS = 16.0
_EPS32 = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Parity:
    """The result of :func:`compare_to_reference` (all in the logits' units).

    Attributes:
        max_abs_diff: ``max |reference - ours_fp64|``.
        fp32_error: ``max |ours_fp32 - ours_fp64|``: what float32 rounding costs here.
        scale: ``max |ours_fp64|``.
        tolerance: The accepted ``max_abs_diff``.
    """

    max_abs_diff: float
    fp32_error: float
    scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        return (
            f"max |reference - fp64| = {self.max_abs_diff:.3g} "
            f"({self.max_abs_diff / self.scale:.2g} of max |logit| {self.scale:.4g}); "
            f"fp32 rounding here {self.fp32_error:.3g}; tolerance {self.tolerance:.3g}: "
            + ("within" if self.ok else "OUTSIDE")
        )


def fp64_reference(
    fn: Callable[..., torch.Tensor], model: nn.Module, *inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(model, *inputs)`` in float32 as given and on a float64 copy of model and inputs.

    Returns:
        ``(fp32 output, fp64 output)``; the model itself is left unchanged.
    """
    with torch.no_grad():
        out32 = fn(model, *inputs)
        model64 = copy.deepcopy(model).double()
        out64 = fn(model64, *(x.double() if x.is_floating_point() else x for x in inputs))
    return out32, out64


def compare_to_reference(
    fn: Callable[..., torch.Tensor],
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    expected: torch.Tensor,
) -> Parity:
    """How far ``expected`` (a float32 reference output) is from ``fn(model, *inputs)``.

    Args:
        fn: ``fn(model, *inputs) -> logits``, run once in float32 and once in float64.
        model: Our model (float32), in the mode the reference ran in (usually eval).
        inputs: Its inputs (float tensors are cast to float64 for the exact run).
        expected: The reference implementation's output for the same inputs.

    Returns:
        A :class:`Parity`; ``.ok`` tells whether ``expected`` is within float32 rounding.

    Raises:
        ValueError: ``expected`` has another shape than our output.
    """
    out32, out64 = fp64_reference(fn, model, *inputs)
    if expected.shape != out64.shape:
        raise ValueError(f"reference shape {tuple(expected.shape)} != ours {tuple(out64.shape)}")
    scale = float(out64.abs().max())
    fp32_error = float((out32.double() - out64).abs().max())
    tolerance = FACTOR * max(fp32_error, FLOOR_ULPS * _EPS32 * scale)
    diff = float((expected.double() - out64).abs().max())
    return Parity(diff, fp32_error, scale, tolerance)
