"""The exported graph: normalisation + ISANet (+ argmax), traced with symbolic batch, H and W.

Both formats start from one ``torch.export`` program of :class:`ExportWrapper`. With dynamic
sizes the ISA decoder's grid (``GroupGrid``) switches to its symbolic formulation (ceil-division,
symmetric padding and cropping as index gathers, explicit copies), so tracing needs no branch on
the size and the program holds for every H and W.

The trace uses size-oblivious reasoning (``backed_size_oblivious``): a size that *could* be 1
(ISA blocks per side, for sides up to 64 pixels) is not fixed at trace time. The runtime checks
it leaves that such sizes are not 1 guard nothing (the graph computes the same numbers at 1, as
``tests/test_export.py`` checks at 32x32 and 40x56), so they are removed.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from collections.abc import Sequence

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.export import Dim, ExportedProgram

from isa_explorer.images import MIN_SIDE  # the smallest side any model input may have
from isa_explorer.models.isanet import ISANet

#: Largest side the dynamic shapes declare (a 64k-pixel side would need ~100 GB anyway).
MAX_SIDE = 16384
MAX_BATCH = 1024
_EXAMPLE = (2, 3, 200, 264)  # batch 2 and sides off the multiples of 8: nothing specialises
_SIZE_ONE_CHECK = re.compile(r"Ne\(.*, 1\)")


class ExportError(ValueError):
    """The model or an option cannot be exported (the message says why and what to do)."""


class ExportWrapper(nn.Module):
    """``(N, 3, H, W)`` float32 0-255 RGB -> logits ``(N, K, H, W)`` float32, or with
    ``argmax`` the label map ``(N, H, W)`` int64. The model's normalisation is inside.

    Args:
        model: An :class:`ISANet` (plain or fused for inference).
        argmax: Return class ids instead of logits.
        fp16: Run the network in float16 (input and logits stay float32).
    """

    def __init__(self, model: ISANet, argmax: bool = False, fp16: bool = False):
        super().__init__()
        self.model = copy.deepcopy(model).half() if fp16 else model  # the caller's stays fp32
        self.argmax = argmax
        self.dtype = torch.float16 if fp16 else torch.float32

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, std = self.model.mean.float(), self.model.std.float()
        x = ((image.float() - mean) / std).to(self.dtype)  # (N, 3, H, W) normalised
        logits = self.model(x).float()  # (N, K, H, W)
        return logits.argmax(1) if self.argmax else logits


def trace(
    model: ISANet,
    static: Sequence[int] | None = None,
    argmax: bool = False,
    fp16: bool = False,
) -> ExportedProgram:
    """``torch.export`` the wrapped model.

    Args:
        model: A plain :class:`ISANet` (eval mode is set).
        static: ``(H, W)`` for a graph of one fixed size (batch stays dynamic); ``None`` for
            dynamic batch, H and W (any side from :data:`MIN_SIDE`).
        argmax: Output the label map.
        fp16: Network in float16.

    Returns:
        The exported program (input ``image``).

    Raises:
        ExportError: An unsupported model or option.
    """
    if not isinstance(model, ISANet):
        raise ExportError(f"only ISANet models export, got a {type(model).__name__}")
    if model.mean.numel() != 3:
        raise ExportError(
            f"the exported graph takes RGB images, but this model has {model.mean.numel()} "
            "input channels; export it with torch.export yourself, or train an RGB model"
        )
    batch = Dim("batch", min=1, max=MAX_BATCH)
    if static is not None:
        h, w = (int(v) for v in static)
        if min(h, w) < MIN_SIDE:
            raise ExportError(f"--static {h}x{w}: both sides must be at least {MIN_SIDE} pixels")
        example = torch.full((2, 3, h, w), 127.0)
        shapes = {"image": {0: batch}}
    else:
        example = torch.full(_EXAMPLE, 127.0)
        side = {"min": MIN_SIDE, "max": MAX_SIDE}
        shapes = {"image": {0: batch, 2: Dim("height", **side), 3: Dim("width", **side)}}
    wrapper = ExportWrapper(model.eval(), argmax, fp16).eval()
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(
            wrapper,
            (example,),
            dynamic_shapes=shapes,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
    _simplify(program)
    return program


def _simplify(program: ExportedProgram) -> None:
    """Remove the runtime checks ``size != 1`` that size-oblivious tracing leaves, and rewrite
    size arithmetic ``math.ceil(a / b)`` as ``(a + b - 1) // b``.

    timm's "same" padding (``AvgPool2dSame`` of dilated ResNets) computes sizes with
    ``math.ceil``, which the ``.pt2`` serializer cannot store; for the positive integer sizes
    and strides it sees the two are equal.
    """
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_scalar.default:
            if _SIZE_ONE_CHECK.search(str(node.args[1])):
                graph.erase_node(node)
            continue
        div = node.args[0] if node.target is math.ceil and node.args else None
        if not (isinstance(div, torch.fx.Node) and div.target is operator.truediv):
            continue
        a, b = div.args
        val_a, val_b = (v.meta["val"] if isinstance(v, torch.fx.Node) else v for v in (a, b))
        with graph.inserting_before(node):
            b1 = graph.call_function(operator.sub, (b, 1))
            num = graph.call_function(operator.add, (a, b1))
            floor = graph.call_function(operator.floordiv, (num, b))
        b1.meta["val"] = val_b - 1
        num.meta["val"] = val_a + val_b - 1
        floor.meta = {**node.meta, "val": (val_a + val_b - 1) // val_b}
        node.replace_all_uses_with(floor)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()
