"""The peer benchmark's heads and kinds: each head's published settings on both sides (mmseg's
decode head and the project's ``HeadConfig``), the kinds a case can be, and the kinds run by
default. Read by ``peer_bench.py``, ``peer_report.py`` and ``peer_profile.py``."""

from __future__ import annotations

#: Each head's published settings: mmseg's decode head (``configs/_base_/models/*_r50-d8.py``
#: of mmseg 1.2.2, SyncBN -> BN) and the project's ``HeadConfig`` of the same head.
HEADS = {
    "isa": dict(
        mmseg=dict(type="ISAHead", channels=512, isa_channels=256, down_factor=(8, 8)),
        ours=dict(channels=512, key_channels=256),
        impls=("fused", "explicit"),
    ),
    "nl": dict(
        mmseg=dict(
            type="NLHead", channels=512, reduction=2, use_scale=True, mode="embedded_gaussian"
        ),
        ours=dict(channels=512, options={"reduction": 2}),
        impls=("fused", "explicit"),
        dense=True,
    ),
    "cc": dict(
        mmseg=dict(type="CCHead", channels=512, recurrence=2),
        ours=dict(channels=512, options={"recurrence": 2}),
        impls=(),
    ),
    "da": dict(
        mmseg=dict(type="DAHead", channels=512, pam_channels=64),
        ours=dict(channels=512, options={"pam_channels": 64}),
        impls=("fused", "explicit"),
        dense=True,
    ),
    "gc": dict(
        mmseg=dict(
            type="GCHead",
            channels=512,
            ratio=1 / 4.0,
            pooling_type="att",
            fusion_types=("channel_add",),
        ),
        ours=dict(channels=512, options={"ratio": 0.25}),
        impls=(),
    ),
    "ema": dict(
        mmseg=dict(
            type="EMAHead",
            channels=256,
            ema_channels=512,
            num_bases=64,
            num_stages=3,
            momentum=0.1,
        ),
        ours=dict(
            channels=256,
            options={"ema_channels": 512, "num_bases": 64, "num_stages": 3, "momentum": 0.1},
        ),
        impls=(),
    ),
}
KINDS = (
    "mmseg",
    "ours",
    "fused",
    "explicit",
    "fused-checkpoint",
    "explicit-checkpoint",
    "fused-prepared",
    "ours-prepared",
)


#: ISA's kinds when it runs alone (the peer run of ``results/peer_cpu.json``, as before).
ISA_KINDS = {
    "infer": ("mmseg", "fused", "explicit", "fused-prepared"),
    "train": ("mmseg", "fused", "explicit", "fused-checkpoint"),
}


def default_kinds(head: str, mode: str) -> tuple[str, ...]:
    """mmseg's head and ours: both attention implementations where the head has them (``fused``,
    ``explicit``), else its one path (``ours``)."""
    return ("mmseg", *(HEADS[head]["impls"] or ("ours",)))
