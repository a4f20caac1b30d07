"""Training and validation data: reproducible augmentation and a resumable sample order.

Samples come in the order of a ``DistributedSampler`` (``set_epoch`` per epoch, one shard per
process), augmented with the seed ``(seed, epoch, index)``: iteration ``i`` always sees the same
batch, whatever the number of workers and whether the run was resumed in between.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2

from isa_explorer.configs import TrainConfig, folder_scale
from isa_explorer.data import build_dataset, build_eval_transforms, build_train_transforms
from isa_explorer.distributed import DistInfo, ShardSampler


class SeededTransforms(Dataset):
    """A dataset whose item ``(epoch, index)`` is ``dataset[index]`` augmented with a fixed seed.

    Args:
        dataset: Dataset of ``(image, mask)`` (without transforms).
        transforms: Random ``(image, mask) -> (image, mask)`` callable (torch RNG).
        seed: Run seed; the augmentation of ``(epoch, index)`` is seeded by
            ``(seed, epoch, index)`` without touching the caller's RNG.
    """

    def __init__(self, dataset: Dataset, transforms: Callable, seed: int):
        self.dataset, self.transforms, self.seed = dataset, transforms, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        image, mask = self.dataset[index]
        sample_seed = int(np.random.SeedSequence((self.seed, epoch, index)).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transforms(image, mask)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)`` keys from a ``DistributedSampler``, resumable.

    Each epoch calls ``sampler.set_epoch(epoch)`` and drops the last incomplete batch. The
    position (epoch, batch within the epoch) is part of the training checkpoint.

    Args:
        sampler: The ``DistributedSampler`` (shuffled, one shard per process).
        batch_size: Images per batch.
    """

    def __init__(self, sampler: DistributedSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.batches_per_epoch = len(sampler) // self.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the training shard holds {len(sampler)} images, fewer than a batch of "
                f"{self.batch_size}; lower batch_size or use more data"
            )
        self.epoch, self.batch = 0, 0

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def advance(self) -> None:
        """Count one consumed batch (called by the training loop, not by the loader)."""
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.batch
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(start, self.batches_per_epoch):
                chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(epoch, i) for i in chunk]
            epoch, start = epoch + 1, 0


def _datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, Callable, Callable]:
    """``(train, val, train_transforms, eval_transforms)`` for a config."""
    if cfg.dataset == "synthetic-context":
        syn = cfg.synthetic
        train = build_dataset(
            "synthetic-context", None, "train", length=syn.train_length, seed=syn.train_seed,
            size=syn.size,
        )  # fmt: skip
        val = build_dataset(
            "synthetic-context", None, "val", length=syn.val_length, seed=syn.val_seed,
            size=syn.size,
        )  # fmt: skip
        # Whole scenes; a horizontal flip mirrors cue and objects together, keeping the task.
        return train, val, v2.RandomHorizontalFlip(p=0.5), v2.Identity()
    if cfg.dataset == "folder":
        if cfg.data_root is None:
            raise ValueError("the folder dataset needs --data-root DIR (your images and masks)")
        scale, crop = folder_scale(cfg), cfg.crop_size or (512, 512)
        folder = cfg.folder
        train = build_dataset("folder", cfg.data_root, cfg.train_split, config=folder)
        raw = train.info.image_mode == "raw"
        if raw and folder.mean is None:  # the data check's statistics (cached)
            from isa_explorer.data.folder_check import check_folder

            report = check_folder(cfg.data_root, folder, splits=(cfg.train_split, cfg.val_split))
            folder = dataclasses.replace(folder, mean=report.mean, std=report.std)
            train = build_dataset("folder", cfg.data_root, cfg.train_split, config=folder)
        val_tf = build_eval_transforms(scale)
        val = build_dataset("folder", cfg.data_root, cfg.val_split, val_tf, config=folder)
        train_tf = build_train_transforms(scale, crop, photometric=not raw)
        return train, val, train_tf, v2.Identity()
    if cfg.crop_size is None or cfg.scale is None:
        raise ValueError(f"{cfg.dataset} training needs scale and crop_size in the config")
    train = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split)
    val = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, build_eval_transforms(cfg.scale))
    return train, val, build_train_transforms(cfg.scale, cfg.crop_size), v2.Identity()


def build_loaders(
    cfg: TrainConfig, info: DistInfo
) -> tuple[DataLoader, ResumableBatchSampler, DataLoader, Any]:
    """Training loader (endless, resumable), its batch sampler, the val loader and its info.

    Every process evaluates its own shard of the val set (:func:`isa_explorer.evaluation.evaluate`
    sums them): synthetic scenes batched like training, real images one at a time (sizes differ).

    Returns:
        ``(train_loader, batch_sampler, val_loader, dataset_info)``.
    """
    train, val, train_tf, _ = _datasets(cfg)
    sampler = DistributedSampler(
        train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    batch_sampler = ResumableBatchSampler(sampler, cfg.batch_size)
    pin = info.device.type == "cuda"
    # Loader generators keep the DataLoader from drawing its worker seeds from the global RNG.
    train_loader = DataLoader(
        SeededTransforms(train, train_tf, cfg.seed),
        batch_sampler=batch_sampler,
        num_workers=cfg.workers,
        pin_memory=pin,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_batch = cfg.batch_size if cfg.dataset == "synthetic-context" else 1
    val_loader = DataLoader(
        val,
        batch_size=val_batch,
        sampler=ShardSampler(len(val), info.rank, info.world_size),  # as isa-explorer evaluate
        num_workers=min(cfg.workers, 2),
        pin_memory=pin,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return train_loader, batch_sampler, val_loader, train.info
