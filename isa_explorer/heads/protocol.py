"""What a context head is and declares, for the rest of ISA Explorer.

A head (:class:`Head`) is an ``nn.Module`` on the encoder's last feature map; with
``return_attention=True`` it also returns a :class:`Record` of what it attended with. Beside
its math, in the same file, it declares its maps, their reach, its cost, its training outputs
and state, and its mmseg names; ``docs/architecture.md`` ("The head protocol") tabulates who
reads what. The registry is :mod:`isa_explorer.heads.registry`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from isa_explorer.models.layers import AttnImpl

BYTES = 4  # float32
PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class HeadConfig:
    """The options a head is built from (``ISANet``'s ``decoder_*`` arguments).

    Attributes:
        channels: Head channels (512 in the published models).
        key_channels: Query/key channels of attention heads (256).
        dropout: Dropout before the classifier.
        attn_impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention.
        down_factor: Block size of heads that group positions (ISA's 8 x 8).
        order: Order of ISA's two steps.
        options: Options of a head's own, by name (documented by the head).
    """

    channels: int = 512
    key_channels: int = 256
    dropout: float = 0.1
    attn_impl: AttnImpl = "fused"
    down_factor: tuple[int, int] = (8, 8)
    order: str = "long-short"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapInfo:
    """One named map of a query cell.

    Attributes:
        name: Key in :meth:`Head.query_maps`' result (``"long"``, ``"combined"``, ...).
        title: Short label of its panel.
        caption: What it shows, one phrase.
        reach: The step of :meth:`Head.reach` whose cells its panel outlines, if any.
        per_query: ``False`` for a map that is the same for every query of an image (GC's
            context mask): its caption says so.
    """

    name: str
    title: str
    caption: str
    reach: str | None = None
    per_query: bool = True


@dataclass(frozen=True)
class ValueInfo:
    """One named quantity of a query that is not a map over positions (a vector over EMA's
    bases, DA's channel-attention matrix).

    Attributes:
        name: Key in :meth:`Head.query_values`' result.
        title: Short label of its panel.
        caption: What it shows, one phrase.
        per_query: ``False`` for a value shared by every query of an image.
    """

    name: str
    title: str
    caption: str
    per_query: bool = True


@dataclass(frozen=True)
class MmsegNames:
    """How a head is named in mmsegmentation.

    Attributes:
        head_type: The decode head's class (``"ISAHead"``).
        modules: The decode head's submodules with weights (``decode_head.NAME.*``): a
            checkpoint is this head's when its decode head has them and no module of another
            head (mmseg's FCN-based heads add theirs to ``convs`` and ``conv_cat``).
        renames: ``(mmseg prefix, ISA Explorer prefix)`` pairs under ``decode_head.``; keys
            not listed keep their names.
    """

    head_type: str
    modules: tuple[str, ...]
    renames: tuple[tuple[str, str], ...] = ()


@dataclass
class Record:
    """What a head attended with, for ``B`` images (tensors detached, first dim ``B``).

    Subclasses add the head's tensors. ``size`` is the unpadded feature size ``(h, w)``;
    maps live on ``padded`` with the unpadded map at ``offset``.
    """

    size: tuple[int, int]

    @property
    def padded(self) -> tuple[int, int]:
        """``(hp, wp)`` of the grid the maps live on (the feature size unless padded)."""
        return self.size

    @property
    def offset(self) -> tuple[int, int]:
        """``(top, left)`` of the unpadded map inside the padded grid."""
        return 0, 0

    def crop(self, m: torch.Tensor) -> torch.Tensor:
        """A map ``(..., hp, wp)`` cropped to the feature grid ``(..., h, w)``."""
        (top, left), (h, w) = self.offset, self.size
        return m[..., top : top + h, left : left + w]

    def block_edges(self) -> tuple[list[int], list[int]]:
        """Rows and columns (feature cells) where a group of the head begins, for drawing."""
        return [], []

    def tensors(self) -> dict[str, torch.Tensor]:
        """The record's tensors by field name."""
        return {
            f.name: v
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        }

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass(frozen=True)
class Cost:
    """Analytic cost of a head's context step on one feature map.

    Attributes:
        positions: Positions attended over (padded, times the batch).
        affinity_elements: Entries of the attention affinities it builds.
        attention_flops: FLOPs of the attention products as run.
        projection_flops: FLOPs of the per-position projections.
        flops: ``{"forward": ..., "forward+backward": ...}``.
        predicted_peak_bytes: Peak memory model, same keys.
        group: The block size of a grouping head (``None`` otherwise).
    """

    positions: int
    affinity_elements: int
    attention_flops: int
    projection_flops: int
    flops: dict[str, int]
    predicted_peak_bytes: dict[str, int]
    group: tuple[int, int] | None = None

    @property
    def affinity_bytes(self) -> int:
        return self.affinity_elements * BYTES

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["group"] = list(self.group) if self.group else None
        return {**out, "affinity_bytes": self.affinity_bytes}


#: A peak-memory model: per pass, ``(a, f)`` such that the peak is ``a`` times the bytes of one
#: ``N x C`` activation plus ``f`` times the bytes of the materialised affinities.
PeakModel = Mapping[str, tuple[float, float]]

# Peak-memory model of relation-block heads, calibrated on CPU measurements and rounded up:
# activations of N x C floats alive at the peak, plus affinities (multiples of their bytes).
_ACTIVATIONS = {"forward": 7, "forward+backward": 22}
_AFFINITIES = {("explicit", "forward"): 2, ("explicit", "forward+backward"): 3}


def softmax_attention_flops(
    pairs: int, key_channels: int, value_channels: int, impl: str = "fused"
) -> tuple[int, int]:
    """``(forward, backward)`` FLOPs of softmax attention over ``pairs`` query-key pairs.

    ``Q K^T`` and ``A V`` cost ``2 pairs (Ck + Cv)``. The fused path
    (``scaled_dot_product_attention``) runs ``Cv``-d values as ``Cv / Ck`` heads sharing queries
    and keys when ``Ck`` divides ``Cv`` (:func:`~isa_explorer.models.layers.fused_attention_heads`),
    so computes ``Q K^T`` that many times. Backward costs twice the forward's matmuls (each
    product's two operand gradients), the flash kernel ``2.5x`` (it recomputes ``Q K^T``), as
    :mod:`torch.utils.flop_counter` counts them. A fused call whose one head has ``Cv`` not a
    multiple of ``Ck`` runs SDPA's math kernel on the CPU (the flash kernel needs one head
    dimension): the explicit figures, backward ``2x``.
    """
    flash = impl == "fused" and value_channels % key_channels == 0
    heads = value_channels // key_channels if flash else 1
    forward = 2 * pairs * (key_channels * heads + value_channels)
    return forward, forward * 5 // 2 if flash else 2 * forward


def peak_bytes(activation_bytes: int, affinity_bytes: int, model: PeakModel) -> dict[str, int]:
    """``{pass: a * activation_bytes + f * affinity_bytes}`` for ``(a, f) = model[pass]``."""
    return {p: int(a * activation_bytes + f * affinity_bytes) for p, (a, f) in model.items()}


def context_cost(
    positions: int,
    affinity_elements: int,
    attention: tuple[int, int],
    projection_flops: int,
    predicted_peak_bytes: dict[str, int],
    group: tuple[int, int] | None = None,
) -> Cost:
    """A :class:`Cost` from its parts: ``attention`` is the ``(forward, backward)`` FLOPs of
    the products between positions (affinities, their use, pooling); projections cost twice
    their forward in backward (the input's and the weights' gradients), so ``forward+backward``
    is ``attention_fwd + attention_bwd + 3 projection_flops``."""
    fwd, bwd = attention
    return Cost(
        positions=positions,
        affinity_elements=affinity_elements,
        attention_flops=fwd,
        projection_flops=projection_flops,
        flops={
            "forward": fwd + projection_flops,
            "forward+backward": fwd + bwd + 3 * projection_flops,
        },
        predicted_peak_bytes=predicted_peak_bytes,
        group=group,
    )


def relation_cost(
    positions: int,
    pairs: int,
    blocks: int,
    channels: int,
    key_channels: int,
    impl: str = "fused",
    batch: int = 1,
    group: tuple[int, int] | None = None,
) -> Cost:
    """The cost of ``blocks`` relation blocks attending ``pairs`` query-key pairs in all.

    Each block projects every position: queries and keys (two 1x1 layers each), values and
    output, ``2 (2 (C Ck + Ck^2) + 2 C^2)`` FLOPs per position; the attention is
    :func:`softmax_attention_flops` with ``Ck``-d keys and ``C``-d values.
    """
    c, ck = channels, key_channels
    pairs *= batch
    proj = blocks * batch * positions * 2 * (2 * (c * ck + ck * ck) + 2 * c * c)
    model = {p: (_ACTIVATIONS[p], _AFFINITIES.get((impl, p), 0)) for p in PASSES}
    peak = peak_bytes(batch * positions * c * BYTES, pairs * BYTES, model)
    attention = softmax_attention_flops(pairs, ck, c, impl)
    return context_cost(batch * positions, pairs, attention, proj, peak, group)


class Head(nn.Module, ABC):
    """Base of every head: the protocol's declarations and their defaults (a head without
    attention keeps ``maps = ()``; the model refuses ``return_attention`` for it)."""

    #: Registry name.
    name: ClassVar[str] = ""
    #: The maps of a query, in display order (empty: no attention to show).
    maps: ClassVar[tuple[MapInfo, ...]] = ()
    #: The map that answers "where does this pixel look" in one picture.
    main_map: ClassVar[str | None] = None
    #: A query's quantities that are not maps, in display order (:meth:`query_values`).
    values: ClassVar[tuple[ValueInfo, ...]] = ()
    #: Loss weight of each training output of :meth:`forward_train` (``"out"`` is the logits
    #: the head predicts with).
    loss_weights: ClassVar[Mapping[str, float]] = {"out": 1.0}
    #: Its mmsegmentation names (``None``: no released mmseg counterpart).
    mmseg: ClassVar[MmsegNames | None] = None
    #: The attention implementations (``HeadConfig.attn_impl``) its attention step has, each
    #: benchmarked as a module of its own: ``("explicit",)`` for a head that always builds its
    #: affinities as tensors and ignores ``attn_impl`` (one module, not two names for it).
    impls: ClassVar[tuple[str, ...]] = ("explicit", "fused")

    @classmethod
    @abstractmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> Head:
        """The head on ``in_channels`` encoder channels, from ``ISANet``'s options."""

    def train(self, mode: bool = True) -> Head:
        # Imported here: isa_explorer.models imports the heads (ISANet builds them).
        from isa_explorer.models.fusion import refuse_training_if_fused

        refuse_training_if_fused(self, mode)  # before any submodule changes mode
        return super().train(mode)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training outputs at feature resolution, one per key of :attr:`loss_weights`."""
        return {"out": self(x)}

    def training_state(self) -> list[torch.Tensor]:
        """Buffers the head updates in training that processes must agree on: the trainer
        averages them across processes after each step (none by default)."""
        return []

    def set_full_checkpoint(self, on: bool) -> None:
        """Full activation checkpointing of the attention in training
        (``train/fit.py --set checkpoint_attention=true``), for heads that have it."""
        if on:
            raise ValueError(
                f"the {self.name!r} head has no activation checkpointing of its attention; "
                "set checkpoint_attention=false"
            )

    @classmethod
    def query_maps(cls, record: Record, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """The maps of feature cell ``(fx, fy)`` of image 0 of ``record``: ``{name: (hp, wp)}``
        float64 on the padded grid, in :attr:`maps` order, each summing to one."""
        raise ValueError(f"the {cls.name!r} head has no attention to probe")

    @classmethod
    def main_maps(cls, record: Record, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The :attr:`main_map` of many query cells of image 0 at once.

        Args:
            record: The head's record.
            fx: ``(Q,)`` int64 columns of the query cells (unpadded feature grid).
            fy: ``(Q,)`` int64 rows.

        Returns:
            ``(Q, hp, wp)`` float64 on the padded grid, row ``i`` equal to
            ``query_maps(record, fx[i], fy[i])[main_map]``.

        This default asks :meth:`query_maps` once per query (a loop over queries, every map of
        each); a head overrides it with the same math batched over the queries, in ``O(Q N)``
        memory for ``N`` cells, never the ``N x N`` affinity of every query. The Compare
        view's whole-image statistics run on it, a chunk of queries at a time.
        """
        if cls.main_map is None:
            raise ValueError(f"the {cls.name!r} head has no attention to probe")
        maps = [
            cls.query_maps(record, x, y)[cls.main_map]
            for x, y in zip(fx.tolist(), fy.tolist(), strict=True)
        ]
        if not maps:
            return torch.zeros(0, *record.padded, dtype=torch.float64)
        return torch.stack(maps).to(torch.float64)

    @classmethod
    def query_values(cls, record: Record, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """The :attr:`values` of feature cell ``(fx, fy)`` of image 0: ``{name: tensor}`` in
        :attr:`values` order, float64 values or int64 indices (DA's strongest channels); none
        by default."""
        return {}

    @classmethod
    def reach(cls, record: Record, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``{step: (h, w) bool}``: the cells each attention step can reach from ``(fx, fy)``,
        in the order the steps run."""
        return {}

    @classmethod
    def cost(
        cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1
    ) -> Cost | None:
        """Analytic cost of the head's context step on an ``h x w`` map (``None``: none)."""
        return None

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module | None:
        """The head's attention step alone, ``(B, C, h, w) -> (B, C, h, w)`` with ``C =
        config.channels``, as benchmarks measure it (``None``: the head has none)."""
        return None

    @classmethod
    def mmseg_config(cls, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """``ISANet`` keyword arguments read from an mmseg ``decode_head.*`` state's shapes."""
        return {}
