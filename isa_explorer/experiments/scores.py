"""What the context experiment measures: held-out mIoU, cue attention and the training step's cost.

Used by :mod:`isa_explorer.experiments.context` (the experiment), by
:mod:`isa_explorer.experiments.default_model` (the embedded models' cards) and by the tests of
the default models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from isa_explorer import heads as registry
from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.data.synthetic import (
    SYNTHETIC_CONTEXT_CLASSES,
    SYNTHETIC_INFO,
    SyntheticConfig,
    SyntheticContextDataset,
    generate,
)
from isa_explorer.evaluation import evaluate
from isa_explorer.models.isanet import ISANet

#: Seed of the held-out scenes: no config trains or validates on it.
HELD_OUT_SEED = 20261124
CUE_CLASSES = (1, 2)


def held_out_metrics(
    model: ISANet,
    size: tuple[int, int] = SyntheticConfig.size,
    n_images: int = 128,
    seed: int = HELD_OUT_SEED,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """mIoU of ``model`` on held-out synthetic scenes, overall and on the context classes.

    Returns:
        :func:`~isa_explorer.evaluation.evaluate`'s metrics plus ``"context_mIoU"`` (mean IoU of
        :data:`SYNTHETIC_CONTEXT_CLASSES`) and the split's ``seed``/``size``.
    """
    data = SyntheticContextDataset(length=n_images, seed=seed, size=size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    device = next(model.parameters()).device
    metrics = evaluate(
        model, loader, SYNTHETIC_INFO.num_classes, device=device, progress=progress,
        class_names=SYNTHETIC_INFO.class_names,
    )  # fmt: skip
    metrics["context_mIoU"] = float(np.mean([metrics["IoU"][c] for c in SYNTHETIC_CONTEXT_CLASSES]))
    metrics.update(seed=seed, size=list(size))
    return metrics


def cue_attention_ratio(
    model: ISANet,
    size: tuple[int, int] = SyntheticConfig.size,
    n_scenes: int = 16,
    seed: int = HELD_OUT_SEED,
    map_name: str | None = None,
) -> dict:
    """How much more attention a context object pays to the cue than the cue's area share.

    For each scene, the query is a pixel well inside a context-decided object (class 3 or 4);
    its ``map_name`` map (default: the head's ``main_map``, ISA's combined one) is summed over
    the feature cells that lie mostly on the cue, and divided by the fraction of cells that do.
    A ratio of 1 is attention spread evenly; the cue is what decides the object's class. Per
    context class too: a model may find one cue colour and decide the other class by its absence
    (the shipped model looks for the red cue), so one class can attend to the cue and the other not.

    Returns:
        ``{"ratios": [...], "median": float, "min": float, "cue_share": [...], "classes": [...],
        "by_class": {name: {"median": float, "count": int}}, "map": map_name}``.
    """
    map_name = map_name or registry.of(model).main_map
    rng = np.random.default_rng(seed)
    ratios, shares, classes = [], [], []
    for index in range(n_scenes):
        image, labels = generate(seed, index, size)
        labels = torch.from_numpy(labels)
        mask = torch.isin(labels, torch.tensor(SYNTHETIC_CONTEXT_CLASSES))[None, None].float()
        objects = (-F.max_pool2d(-mask, 9, stride=1, padding=4))[0, 0] > 0.5  # eroded by 4 px
        ys, xs = torch.nonzero(objects, as_tuple=True)
        if len(ys) == 0:
            continue
        pick = int(rng.integers(len(ys)))
        cache = capture_attention(model, torch.from_numpy(image).permute(2, 0, 1))
        m = query_maps(cache, int(xs[pick]), int(ys[pick])).maps[map_name]  # (h, w) feature grid
        cue = torch.isin(labels, torch.tensor(CUE_CLASSES)).float()  # (H, W)
        cue_cells = cache.cell_mean(cue) > 0.5  # (h, w): cells mostly of cue pixels
        share = float(cue_cells.float().mean())
        if share == 0:
            continue
        ratios.append(float(m[cue_cells].sum() / m.sum()) / share)
        shares.append(share)
        classes.append(int(labels[ys[pick], xs[pick]]))
    by_class = {
        SYNTHETIC_INFO.class_names[c]: {"median": float(np.median(r)), "count": len(r)}
        for c in SYNTHETIC_CONTEXT_CLASSES
        if (r := [v for v, k in zip(ratios, classes, strict=True) if k == c])
    }
    return {
        "ratios": ratios,
        "median": float(np.median(ratios)),
        "min": float(np.min(ratios)),
        "cue_share": shares,
        "classes": classes,
        "by_class": by_class,
        "map": map_name,
    }


def train_step_cost(cfg_overrides: Sequence[str], steps: int = 6, warmup: int = 2) -> dict:
    """Median time and peak memory growth of one training step of a ``synthetic-context`` model.

    Runs in the calling process; the experiment runs it in a fresh process per head
    (:func:`train_step_worker`), so the heads are measured under the same conditions. With
    ``freeze_encoder=true`` among the overrides it is the step of a head on a frozen encoder.
    """
    from isa_explorer.configs import get_config
    from isa_explorer.costs.measure import PeakMemory, median_ms, time_runs
    from isa_explorer.training.model import build_model
    from isa_explorer.training.steps import (
        loss_weights,
        segmentation_loss,
        train_mode,
        trained_parameters,
    )

    cfg = get_config("synthetic-context", cfg_overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, SYNTHETIC_INFO)
    trained = trained_parameters(model, cfg)  # as the training loop: the head only if frozen
    train_mode(model, cfg)
    opt = torch.optim.SGD(trained, lr=1e-3, momentum=cfg.momentum)
    data = SyntheticContextDataset(length=cfg.batch_size, seed=0, size=cfg.synthetic.size)
    images = torch.stack([data[i][0] for i in range(cfg.batch_size)]).float()
    masks = torch.stack([data[i][1] for i in range(cfg.batch_size)]).long()

    def step() -> None:
        outputs = model.forward_train(model.normalize(images))
        loss, _ = segmentation_loss(outputs, masks, loss_weights(model, 0.0), 255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # allocate the optimiser state before the memory baseline
    peak = PeakMemory().start()
    times = time_runs(step, runs=steps, warmup=warmup)
    return {"ms_per_step": median_ms(times), "peak_memory_bytes": peak.growth(),
            "batch": cfg.batch_size, "size": list(cfg.synthetic.size),
            "trained_params": sum(p.numel() for p in trained),
            "threads": torch.get_num_threads()}  # fmt: skip


def train_step_worker(spec: dict) -> dict:
    """:func:`train_step_cost` from a JSON spec, in a fresh process (:mod:`isa_explorer.bench.worker`)."""
    return {"status": "ok", **train_step_cost(spec["overrides"])}
