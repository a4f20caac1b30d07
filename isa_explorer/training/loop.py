"""The training loop: SGD + poly schedule, periodic mIoU, atomic checkpoints, exact resume."""

from __future__ import annotations

import json
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from isa_explorer.configs import TrainConfig
from isa_explorer.distributed import (
    DistInfo,
    all_reduce_mean,
    average_tensors,
    average_training_state,
    barrier,
    cleanup_distributed,
    gather_objects,
    setup_distributed,
    sync_batchnorm,
)
from isa_explorer.evaluation import evaluate
from isa_explorer.training import checkpoint as ckpt
from isa_explorer.training.data import build_loaders
from isa_explorer.training.logs import close_logger, jsonable, open_logger, prediction_grid
from isa_explorer.training.model import build_model
from isa_explorer.training.steps import (
    NonFiniteLossError,
    TrainForward,
    all_finite,
    amp_dtype,
    check_resume_config,
    loss_weights,
    poly_factor,
    segmentation_loss,
    train_mode,
    trained_parameters,
)

CHECKPOINT = Path("checkpoints") / "last.pt"


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    *,
    debug_rank_weights: bool = False,
) -> dict[str, Any]:
    """Train ISANet with a config, in one process or under ``torchrun`` (DDP).

    Args:
        cfg: The training config.
        run_dir: Run directory (``config.json``, ``checkpoints/last.pt``, ``best/``, ``final/``,
            ``log.txt``, ``metrics.json`` and TensorBoard events).
        resume: Continue from ``run_dir/checkpoints/last.pt`` (a fresh start if there is none).
        progress: Show a tqdm bar with the ETA (on rank 0).
        debug_rank_weights: Every process also writes its final weights to
            ``run_dir/debug/rank{R}.pt`` (to check that DDP kept the replicas identical).

    Returns:
        ``{"iters", "best_mIoU", "final_metrics", "sec_per_iter", "peak_memory_bytes",
        "run_dir"}``. ``peak_memory_bytes`` is, on CUDA, ``torch.cuda.max_memory_allocated``
        over the training iterations (evaluations left out, as in mmseg's logged memory); on
        the CPU, the process's peak resident set size.

    Raises:
        FileExistsError: ``run_dir`` holds a checkpoint and ``resume`` is False.
        NonFiniteLossError: The loss or the weights became nan/inf (the last checkpoint is kept).
    """
    joined = dist.is_available() and dist.is_initialized()  # a group set up by the caller
    info = setup_distributed()
    try:
        return _Trainer(cfg, Path(run_dir), info, progress).run(resume, debug_rank_weights)
    finally:
        if not joined:
            cleanup_distributed()


class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, info: DistInfo, progress: bool):
        self.cfg, self.run_dir, self.info, self.progress = cfg, run_dir, info, progress
        self.ckpt_path = run_dir / CHECKPOINT
        self.history: list[dict[str, Any]] = []
        self.losses: list[list[float]] = []  # [iteration, loss] every log_interval
        self.best_miou, self.start_iter, self.last_saved = -math.inf, 0, None

    # -- set-up --------------------------------------------------------------------------------
    def _setup(self, resume: bool) -> dict | None:
        cfg, info = self.cfg, self.info
        state = None
        if self.ckpt_path.is_file():
            if not resume:
                raise FileExistsError(
                    f"{self.run_dir} already holds a checkpoint ({self.ckpt_path}); pass --resume "
                    "to continue that run or choose another --run-dir"
                )
            state = ckpt.load_checkpoint(self.ckpt_path)
            check_resume_config(state["config"], cfg.to_dict())
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.json")
        barrier(info)
        self.log = open_logger(self.run_dir, info.is_main)
        self.writer = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, events logged after the checkpoint (by the killed run) are dropped.
            purge = state["iteration"] + 1 if state else None
            self.writer = SummaryWriter(self.run_dir, purge_step=purge)

        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        self.train_loader, self.batches, self.val_loader, self.data_info = build_loaders(cfg, info)
        model = build_model(cfg.model, self.data_info).to(info.device)
        model, why_not = sync_batchnorm(model, info)
        if why_not is not None:
            self.log.info(why_not)
        if cfg.checkpoint_attention:
            model.decoder.set_full_checkpoint(True)  # refused by heads without it
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.loss_weights = model, loss_weights(model, cfg.aux_weight)
        trained = trained_parameters(model, cfg)
        self.optimizer = torch.optim.SGD(
            trained, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, poly_factor(cfg))
        cuda = info.device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg, info.device)
        if self.amp_dtype is not None:
            scaled = " with loss scaling" if self.amp_dtype == torch.float16 else ""
            self.log.info(f"amp: {self.amp_dtype} autocast on {info.device.type}{scaled}")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # Dropout (and anything else random) differs between processes.
        torch.manual_seed(cfg.seed + 1 + info.rank)
        np.random.seed(cfg.seed + 1 + info.rank)
        random.seed(cfg.seed + 1 + info.rank)

        step: torch.nn.Module = TrainForward(model)
        if info.distributed:
            step = DistributedDataParallel(step, device_ids=[info.local_rank] if cuda else None)
        self.step_fn = torch.compile(step) if cfg.compile else step
        return state

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_iter, self.best_miou = int(state["iteration"]), float(state["best_mIoU"])
        self.history = list(state["history"])
        self.losses = [list(x) for x in state["losses"]]
        self.last_saved = self.start_iter
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank])
            self.batches.load_state_dict(state["sampler"][self.info.rank])
        else:  # another world size shards the data differently: continue the new stream
            epoch, batch = divmod(self.start_iter, self.batches.batches_per_epoch)
            self.batches.load_state_dict({"epoch": epoch, "batch": batch})
            self.log.warning(
                f"checkpoint from {len(rngs)} processes resumed on {self.info.world_size}: "
                "data order and random states are not those of an uninterrupted run"
            )
        self.log.info(f"resumed from {self.ckpt_path} at iteration {self.start_iter}")

    # -- iteration pieces ----------------------------------------------------------------------
    def _sync_bn_stats(self) -> None:
        # CPU replicas each track their own BatchNorm statistics (CUDA: SyncBatchNorm): average.
        if self.info.distributed and self.info.device.type != "cuda":
            buffers = [b for b in self.model.buffers() if b.is_floating_point()]
            with torch.no_grad():
                average_tensors(buffers, self.info)

    def _evaluate(self, it: int) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        devices = [info.device] if info.device.type == "cuda" else []
        self._sync_bn_stats()
        with torch.random.fork_rng(devices=devices):
            metrics = evaluate(
                self.model,
                self.val_loader,
                self.data_info.num_classes,
                mode=cfg.evaluation.mode,
                crop_size=cfg.evaluation.crop,
                stride=cfg.evaluation.stride,
                device=info.device,
                progress=False,
                ignore_index=self.data_info.ignore_index,
                class_names=self.data_info.class_names,
            )
            if self.writer is not None:
                images, masks = next(iter(self.val_loader))
                grid = prediction_grid(
                    self.model, images, masks, self.data_info.palette, info.device
                )
                self.writer.add_image("val/predictions", grid, it)
                for key in ("mIoU", "mAcc", "aAcc"):
                    self.writer.add_scalar(f"val/{key}", metrics[key], it)
        train_mode(self.model, self.cfg)
        self.history.append({"iter": it, **metrics})
        self.log.info(
            f"iter {it}: mIoU {100 * metrics['mIoU']:.2f} mAcc {100 * metrics['mAcc']:.2f} "
            f"aAcc {100 * metrics['aAcc']:.2f}"
        )
        if metrics["mIoU"] > self.best_miou:
            self.best_miou = metrics["mIoU"]
            if info.is_main:
                ckpt.save_model_dir(self.model, self.run_dir / "best")
        return metrics

    def _checkpoint(self, it: int) -> None:
        self._sync_bn_stats()
        if not all_finite(self.model):
            self._non_finite(it, "the weights")
        rngs = gather_objects(ckpt.rng_state(), self.info)
        samplers = gather_objects(self.batches.state_dict(), self.info)
        if self.info.is_main:
            state = {
                "iteration": it,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "sampler": samplers,
                "rng": rngs,
                "config": self.cfg.to_dict(),
                "best_mIoU": self.best_miou,
                "history": self.history,
                "losses": self.losses,
            }
            ckpt.save_checkpoint(self.ckpt_path, state)
        self.last_saved = it
        barrier(self.info)

    def _non_finite(self, it: int, what: str) -> None:
        saved = self.last_saved is not None
        where = (
            f"the last good checkpoint ({self.ckpt_path}, iteration {self.last_saved}) is intact"
            if saved
            else "no checkpoint was written yet"
        )
        msg = (
            f"{what} became nan/inf at iteration {it}; training stopped and {where}. Lower the "
            f"learning rate (lr={self.cfg.lr:g}), set clip_grad (e.g. --set clip_grad=10) or "
            "check the data, then resume with --resume or start a new run"
        )
        self.log.error(msg)
        raise NonFiniteLossError(msg, it, str(self.ckpt_path) if saved else None)

    # -- the run -------------------------------------------------------------------------------
    def run(self, resume: bool, debug_rank_weights: bool) -> dict[str, Any]:
        try:
            state = self._setup(resume)
            if state is not None:
                self._restore(state)
            elif resume:
                self.log.info(f"no checkpoint in {self.run_dir}: starting from scratch")
            return self._loop(debug_rank_weights)
        finally:
            if getattr(self, "writer", None) is not None:
                self.writer.close()
            if hasattr(self, "log"):
                close_logger(self.log)

    def _loop(self, debug_rank_weights: bool) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        cuda = info.device.type == "cuda"
        if cuda:
            # As mmseg's env_cfg (cudnn_benchmark=True): the crops keep one size.
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(info.device)
        train_peak = 0  # CUDA: bytes at the peak of the training iterations (not evaluation)
        self.log.info(
            f"training {cfg.name}: {cfg.iters} iterations, {info.world_size} process(es) x "
            f"batch {cfg.batch_size} on {info.device}, run dir {self.run_dir}"
        )
        train_mode(self.model, self.cfg)
        data = iter(self.train_loader)
        bar = tqdm(
            total=cfg.iters,
            initial=self.start_iter,
            desc=cfg.name,
            unit="it",
            disable=not (self.progress and info.is_main),
            dynamic_ncols=True,
        )
        warmup = min(5, max(0, (cfg.iters - self.start_iter) // 4))
        step_times: list[float] = []
        final = self.history[-1] if self.history else None
        for it in range(self.start_iter + 1, cfg.iters + 1):
            t0 = time.perf_counter()
            images, masks = next(data)
            images = images.to(info.device, non_blocking=True).as_subclass(torch.Tensor)
            masks = masks.to(info.device, non_blocking=True).as_subclass(torch.Tensor)
            x = self.model.normalize(images.float())
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            amp = self.amp_dtype is not None
            with torch.autocast(info.device.type, dtype=self.amp_dtype, enabled=amp):
                outputs = self.step_fn(x)
            loss, parts = segmentation_loss(
                outputs, masks.long(), self.loss_weights, self.data_info.ignore_index
            )
            mean_loss = float(all_reduce_mean(loss, info))  # also agrees on nan across ranks
            if not math.isfinite(mean_loss):
                self._non_finite(it, "the loss")
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            average_training_state(self.model, info)
            self.scheduler.step()
            self.batches.advance()
            if cuda:
                torch.cuda.synchronize(info.device)
            if it > self.start_iter + warmup:
                step_times.append(time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")

            if it % cfg.log_interval == 0 or it == cfg.iters:
                parts_txt = " ".join(f"{k} {float(v.detach()):.4f}" for k, v in parts.items())
                self.log.info(
                    f"iter {it}/{cfg.iters} loss {mean_loss:.4f} ({parts_txt}) lr {lr:.3e}"
                )
                self.losses.append([it, mean_loss])
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", mean_loss, it)
                    self.writer.add_scalar("train/lr", lr, it)
            if it % cfg.eval_interval == 0 or it == cfg.iters:
                if cuda:
                    train_peak = max(train_peak, torch.cuda.max_memory_allocated(info.device))
                final = self._evaluate(it)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(info.device)
            if it % cfg.ckpt_interval == 0 or it == cfg.iters:
                self._checkpoint(it)
        bar.close()
        if final is None:  # resumed a finished run whose history is empty: evaluate once
            final = self._evaluate(cfg.iters)

        peak = (
            max(train_peak, torch.cuda.max_memory_allocated(info.device))
            if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        result = {
            "iters": cfg.iters,
            "best_mIoU": self.best_miou,
            "final_metrics": {k: v for k, v in final.items() if k != "iter"},
            "sec_per_iter": sum(step_times) / len(step_times) if step_times else float("nan"),
            "peak_memory_bytes": int(peak),
            "run_dir": str(self.run_dir),
        }
        if debug_rank_weights:
            (self.run_dir / "debug").mkdir(exist_ok=True)
            weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            torch.save(weights, self.run_dir / "debug" / f"rank{info.rank}.pt")
        if info.is_main:
            ckpt.save_model_dir(self.model, self.run_dir / "final")
            more = {"world_size": info.world_size, "history": self.history, "losses": self.losses}
            text = json.dumps(jsonable({**result, **more}), indent=2, allow_nan=False)
            (self.run_dir / "metrics.json").write_text(text + "\n")
        barrier(info)
        self.log.info(
            f"done: best mIoU {100 * self.best_miou:.2f}, final mIoU "
            f"{100 * final['mIoU']:.2f}, {result['sec_per_iter']:.3f} s/iter"
        )
        return result
