"""The cases of ``isa-explorer bench decoder``: every registered head's whole decoder.

A *path* (:func:`decoder_paths`) is a registered head with one attention implementation of its
:attr:`~isa_explorer.heads.protocol.Head.impls` (``isa-fused``, ``cc-explicit``, ...; ``fcn``:
no attention) and, for heads with full activation checkpointing of their attention, its
checkpointed training path (``isa-fused-checkpoint``). :func:`head_config` builds each with its
published settings, :func:`measure_decoder` times one forward or training step and
:func:`decoder_flops` counts its FLOPs on the meta device beside the head's analytic cost.
The command line and the fresh-process runner: :mod:`isa_explorer.bench.decoder`.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from isa_explorer import heads
from isa_explorer.attention import AttentionCache, capture_attention, query_maps
from isa_explorer.configs import HEAD_RECIPES
from isa_explorer.costs.flops import register_sdpa_formulas
from isa_explorer.costs.measure import MiB, PeakMemory, median_ms, time_runs
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.fusion import fuse_for_inference

MODES = ("infer", "train")
#: The analytic pass of each mode (:attr:`~isa_explorer.heads.protocol.Cost.flops`' keys).
PASS_OF = {"infer": "forward", "train": "forward+backward"}
#: The published shape: ResNet stage-4 input, classes, channels, query/key channels.
HEAD = dict(in_channels=2048, classes=19, channels=512, key_channels=256)
DOWN_FACTOR = (8, 8)
#: Implementations in the order their paths are listed.
IMPL_ORDER = ("fused", "explicit")
#: Paths run only when named (``--paths``): the ``N x N`` affinity of the dense ablation.
ON_REQUEST = ("dense-explicit",)
#: The decoder of the attention probe (ISA's maps of one query).
PROBE_PATH = "isa-fused"
STRIDE = 8  # feature cell of an output-stride-8 encoder, for the probe's image size


class DecoderPath(NamedTuple):
    """A benchmark path: a registered head, its attention implementation (``None`` for a head
    without attention) and whether its attention is checkpointed (training only)."""

    head: str
    impl: str | None
    checkpoint: bool = False


def decoder_paths() -> dict[str, DecoderPath]:
    """``{path: DecoderPath}`` of the registered heads, now (see the module docstring)."""
    out: dict[str, DecoderPath] = {}
    for name in heads.names():
        cls = heads.get(name)
        if name not in heads.with_attention():
            out[name] = DecoderPath(name, None)
            continue
        impls = [i for i in IMPL_ORDER if i in cls.impls]
        out.update({f"{name}-{impl}": DecoderPath(name, impl) for impl in impls})
        if cls.set_full_checkpoint is not heads.Head.set_full_checkpoint:  # has checkpointing
            out.update({f"{name}-{i}-checkpoint": DecoderPath(name, i, True) for i in impls})
    return out


def path_of(path: str) -> DecoderPath:
    """The :class:`DecoderPath` of a path name.

    Raises:
        ValueError: An unknown path (the message lists the known ones).
    """
    known = decoder_paths()
    if path not in known:
        raise ValueError(f"unknown path {path!r}: choose from {', '.join(known)}")
    return known[path]


def default_paths(mode: str = "infer") -> list[str]:
    """Every path but :data:`ON_REQUEST` and the checkpointed ones; in training also each
    checkpointing head's ``fused`` checkpointed path."""
    return [
        path
        for path, p in decoder_paths().items()
        if path not in ON_REQUEST
        and (not p.checkpoint or (mode == "train" and p.impl == IMPL_ORDER[0]))
    ]


def head_config(path: str, head: dict[str, Any] | None = None) -> tuple[int, int, HeadConfig]:
    """``(in_channels, classes, config)`` of a path's head.

    Args:
        path: A name of :func:`decoder_paths`.
        head: ``None``: :data:`HEAD` with the head's published settings
            (:data:`~isa_explorer.configs.HEAD_RECIPES`). Else ``in_channels``, ``classes``,
            ``channels``, ``key_channels`` for every head, and ``options``: ``{head: {option:
            value}}`` over the published options (small EMA bases, DA PAM channels, ...).

    Raises:
        ValueError: An unknown path (the message lists the known ones).
    """
    p = path_of(path)
    published = HEAD_RECIPES.get(p.head, ("", {}))[1]
    options = dict(published.get("head_options", {}))
    if head is None:
        channels = published.get("decoder_channels", HEAD["channels"])
        key_channels = published.get("decoder_isa_channels", HEAD["key_channels"])
        shape = {**HEAD, "channels": channels, "key_channels": key_channels}
    else:
        shape = head
        options.update(head.get("options", {}).get(p.head, {}))
    config = HeadConfig(
        shape["channels"],
        shape["key_channels"],
        attn_impl=p.impl or HeadConfig.attn_impl,
        down_factor=tuple(published.get("decoder_down_factor", DOWN_FACTOR)),
        options=options,
    )
    return shape["in_channels"], shape["classes"], config


def build_decoder(
    path: str, head: dict[str, Any] | None = None, mode: str = "infer", device: str = "cpu"
) -> nn.Module:
    """The decoder of one benchmark ``path`` (:func:`head_config`), on ``device``.

    ``mode="infer"``: fused for inference; ``"train"``: the plain decoder in train mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    in_channels, classes, config = head_config(path, head)
    p = path_of(path)
    if p.checkpoint and mode != "train":
        raise ValueError(f"{path!r} is a training path (checkpointing keeps nothing at inference)")
    with torch.device(device):
        decoder = heads.get(p.head).build(in_channels, classes, config)
    decoder.set_full_checkpoint(p.checkpoint)
    return decoder.train() if mode == "train" else fuse_for_inference(decoder)


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    """One training step of a decoder without an optimizer: forward, a mean-square loss summed
    over every training output (:meth:`~isa_explorer.heads.Head.forward_train`: DA's three),
    backward."""
    outputs = model.forward_train(x).values()
    sum(y.float().square().mean() for y in outputs).backward()
    model.zero_grad(set_to_none=True)


def measure_decoder(
    path: str,
    size: tuple[int, int],
    runs: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    head: dict[str, Any] | None = None,
    mode: str = "infer",
) -> dict[str, Any]:
    """Time and peak memory growth of one decoder forward (``mode="infer"``) or training
    step (``"train"``, :func:`train_step`), in this process.

    Run it in a fresh process (:func:`~isa_explorer.bench.decoder.run_case`) for a CPU memory
    figure: the peak RSS of a process never goes down.
    """
    torch.manual_seed(0)
    model = build_decoder(path, head, mode).to(device)
    h, w = size
    x = torch.randn(1, head_config(path, head)[0], h, w, device=device)  # (1, Cin, h, w)
    mem = PeakMemory(device).start()
    if mode == "train":
        times = time_runs(lambda: train_step(model, x), runs, warmup, device)
    else:
        with torch.inference_mode():
            times = time_runs(lambda: model(x), runs, warmup, device)
    peak = mem.growth()
    p = path_of(path)
    return {
        "path": path,
        "head": p.head,
        "impl": p.impl,
        "checkpoint": p.checkpoint,
        "mode": mode,
        "size": [h, w],
        "positions": h * w,
        "median_ms": round(median_ms(times), 2),
        "times_ms": [round(1000 * t, 2) for t in times],
        "peak_mib": round(peak / MiB, 1),
        "memory_method": mem.method,
        "status": "ok",
    }


def analytic_cost(
    path: str, size: tuple[int, int], head: dict[str, Any] | None = None
) -> heads.Cost | None:
    """The head's declared cost of its context step (:meth:`~isa_explorer.heads.Head.cost`)
    on an ``h x w`` map, batch 1 (``None``: it declares none)."""
    p, config = path_of(path), head_config(path, head)[2]
    return heads.get(p.head).cost(*size, config, p.impl or config.attn_impl, 1)


def decoder_flops(
    path: str, size: tuple[int, int], head: dict[str, Any] | None = None, mode: str = "infer"
) -> dict[str, int]:
    """FLOPs of one pass: ``flops`` of the whole decoder counted on the meta device (the
    forward under ``no_grad``, or :func:`train_step`), and ``attention_flops_analytic``, the
    head's declared cost of its context step for the pass (absent where it declares none)."""
    register_sdpa_formulas()  # the CPU flash kernel counts as the matmuls it replaces
    model = build_decoder(path, head, mode, device="meta")
    x = torch.randn(1, head_config(path, head)[0], *size, device="meta")  # (1, Cin, h, w)
    with FlopCounterMode(display=False) as counter:
        if mode == "train":
            train_step(model, x)
        else:
            with torch.no_grad():
                model(x)
    out = {"flops": int(counter.get_total_flops())}
    if (cost := analytic_cost(path, size, head)) is not None:
        out["attention_flops_analytic"] = int(cost.flops[PASS_OF[mode]])
    return out


def capture_cache(size: tuple[int, int], device: str = "cpu") -> AttentionCache:
    """Queries and keys of the published :data:`PROBE_PATH` head on a random feature map."""
    torch.manual_seed(0)
    decoder = build_decoder(PROBE_PATH).to(device)
    x = torch.randn(1, HEAD["in_channels"], *size, device=device)  # (1, 2048, h, w)
    return capture_attention(decoder, x, stride=STRIDE)


def measure_probe(
    size: tuple[int, int] = (128, 256), queries: int = 30, warmup: int = 3, device: str = "cpu"
) -> dict[str, Any]:
    """Median latency of :func:`query_maps` (all three maps of one query) on a cached image."""
    cache = capture_cache(size, device)
    rng = random.Random(0)
    H, W = cache.image_size
    points = [(rng.randrange(W), rng.randrange(H)) for _ in range(queries)]
    for x, y in points[:warmup]:
        query_maps(cache, x, y)
    times = []
    for x, y in points:
        times += time_runs(lambda x=x, y=y: query_maps(cache, x, y), 1, 0, device)
    return {
        "size": list(size),
        "queries": queries,
        "median_ms": round(median_ms(times), 2),
        "max_ms": round(1000 * max(times), 2),
        "cache_mib": round(cache.nbytes / MiB, 1),
        "status": "ok",
    }
