"""Dense self-attention with ISA's own weights: ISA's ablation.

The same ``in_conv``, relation block and ``out_conv`` as the ISA head, but one attention over
all ``N = h * w`` positions (an ``N x N`` affinity). Built from an ISA model's weights (its
``global_relation`` as ``relation``) it answers "what would ISA's weights do without the
grouping?" (notebook 3). mmsegmentation's non-local head is a head of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isa_explorer.heads.protocol import Cost, HeadConfig, MapInfo, Record, relation_cost
from isa_explorer.heads.registry import register
from isa_explorer.heads.shell import ContextHead
from isa_explorer.models.layers import AttnImpl, RelationBlock


@dataclass
class DenseRecord(Record):
    """Queries and keys of the one attention step.

    Attributes:
        q, k: ``(B, Ck, h, w)`` maps.
        scale: Affinity scale ``Ck ** -0.5``.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float


def dense_context(
    relation: RelationBlock, residual: torch.Tensor, impl: AttnImpl, return_attention: bool
) -> tuple[torch.Tensor, DenseRecord | None]:
    """One attention over all ``h * w`` positions of ``residual (B, C, h, w)``.

    Returns the context ``(B, C, h, w)`` and, when asked, the :class:`DenseRecord`.
    """
    b, c, h, w = residual.shape
    t = residual.flatten(2).transpose(1, 2)  # (B, h*w, C)
    if not return_attention:
        return relation(t, impl).transpose(1, 2).reshape(b, c, h, w), None
    t, q, k = relation(t, impl, return_qk=True)
    q, k = (v.transpose(1, 2).reshape(b, -1, h, w).detach() for v in (q, k))  # (B, Ck, h, w)
    return t.transpose(1, 2).reshape(b, c, h, w), DenseRecord((h, w), q, k, relation.scale)


@register
class DenseAttentionDecoder(ContextHead):
    """Dense (non-local) self-attention head with the ISA head's channels.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        isa_channels: Query/key channels (256).
        dropout: Dropout before the classifier.
        attn_impl: ``"fused"``, ``"explicit"`` or ``"auto"``.
    """

    name = "dense"
    maps = (MapInfo("dense", "Dense attention", "one map, over every position", "dense"),)
    main_map = "dense"

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        isa_channels: int = 256,
        dropout: float = 0.1,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__(in_channels, classes, channels, dropout, attn_impl)
        self.relation = RelationBlock(channels, isa_channels)

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> DenseAttentionDecoder:
        c = config
        return cls(in_channels, classes, c.channels, c.key_channels, c.dropout, c.attn_impl)

    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, DenseRecord | None]:
        residual = self.in_conv(x)
        context, attn = dense_context(self.relation, residual, self.attn_impl, return_attention)
        return context, residual, attn

    @classmethod
    def query_maps(cls, record: DenseRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """The softmax row of cell ``(fx, fy)`` (:meth:`main_maps` of one query)."""
        return {"dense": cls.main_maps(record, torch.tensor([fx]), torch.tensor([fy]))[0]}

    @classmethod
    def main_maps(cls, record: DenseRecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The dense maps of ``Q`` cells at once: their queries against every key (the one home
        of the head's map math: :meth:`query_maps` asks for one query).

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, row ``i`` equal to ``query_maps(record, fx[i], fy[i])['dense']``;
            ``O(Q N)`` memory.
        """
        q, k = record.q[0].double(), record.k[0].double()  # (C., h, w)
        logits = torch.einsum("cq,chw->qhw", q[:, fy, fx], k) * record.scale  # (Q, h, w)
        return logits.flatten(1).softmax(-1).view_as(logits)  # softmax over (h * w)

    @classmethod
    def reach(cls, record: DenseRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        return {"dense": torch.ones(record.size, dtype=torch.bool)}

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        n = h * w
        return relation_cost(n, n * n, 1, config.channels, config.key_channels, impl, batch)
