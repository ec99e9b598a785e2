"""The one training loop: every trained model of the project (indexer stages, fine-tuning, rq-VAE,
SASRec) runs through `train`.

Read `train` top to bottom, as nanoGPT's train.py:

1. device and data parallelism: under `torchrun` (WORLD_SIZE > 1) the process group is created
   from the torch.distributed environment variables (gloo on CPU, nccl on GPU); each rank gets its
   own batches from the caller's source and gradients are averaged across ranks after every
   backward pass. This is the update of DistributedDataParallel without wrapping the model, so a
   loss function may call any method of it (indexer stages do);
2. seeding: python, numpy and torch are seeded with `settings.seed` when the loop starts, so a run
   is a function of its seed (on CPU bit for bit);
3. AdamW over parameter groups (`parameter_groups`: no weight decay on biases, norms and
   embeddings; a learning rate per parameter when the caller gives one), a warm-up then a linear
   or cosine decay (`lr_factor`), mixed precision on CUDA (bfloat16 where supported, else
   float16 with a GradScaler; fp32 on CPU), gradient clipping;
4. resume: `<run_dir>/checkpoint.pt` holds the model, optimiser, scheduler, scaler, every rank's
   RNG state and the exact data position (epoch, batch); a stopped run continues with the batch
   the uninterrupted run would have taken next, because the batch source is a function of
   (seed, epoch, rank). A finished run is marked done and returns at once when run again;
5. after each epoch: the caller's `on_epoch_end` hook, then `evaluate` and early stopping on one
   of its figures (`settings.metric`, higher or lower is better, `patience` epochs), the best
   weights restored at the end;
6. progress: tqdm bars on a terminal, otherwise a log line every `log_every` steps with the mean
   logs, throughput and ETA.

Usage::

    def loss_fn(model, batch):            # -> (scalar loss, named float logs)
        loss = F.mse_loss(model(batch.x), batch.y)
        return loss, {"mse": float(loss)}

    def batches(epoch, rank, world_size):  # deterministic in (seed, epoch), this rank's share
        order = np.random.default_rng([seed, epoch]).permutation(n)
        return shard([order[i:i + 32] for i in range(0, n, 32)], rank, world_size)

    result = train(model, LoopSettings(epochs=3, lr=1e-3), batches, loss_fn, run_dir)

Gradient accumulation is not offered: no caller needs it (a larger global batch comes from more
ranks or a larger `batch_size` of the caller's source).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from training.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"

B = TypeVar("B")

# The settings that decide what a run computes: a checkpoint written under others is not resumed.
_RESULT_SETTINGS = ("epochs", "max_steps", "lr", "weight_decay", "schedule", "warmup_steps", "min_lr_ratio",
                    "grad_clip", "seed")


@dataclass(frozen=True)
class LoopSettings:
    """Optimiser, schedule and bookkeeping of one training run (build with training.config.build_config)."""

    epochs: int = field(default=1, metadata={
        "help": "Passes over the batches (0 = no limit: max_steps ends the run)."})
    max_steps: int = field(default=0, metadata={
        "help": "Stop after this many optimiser steps (0 = no limit: epochs end the run)."})
    lr: float = field(default=1e-3, metadata={
        "help": "Peak learning rate of AdamW (parameter groups may have their own, see parameter_groups)."})
    weight_decay: float = field(default=0.0, metadata={
        "help": "AdamW weight decay; never on biases, norms and embeddings."})
    schedule: Literal["linear", "cosine", "constant"] = field(default="linear", metadata={
        "help": "After the warm-up: linear or half-cosine decay from the peak to min_lr_ratio x peak at the "
                "last step, or a constant learning rate."})
    warmup_steps: int = field(default=0, metadata={"help": "Steps of linear learning-rate warm-up from 0."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Learning rate at the last step, x peak."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm (0 = no clipping)."})
    seed: int = field(default=42, metadata={"help": "Seed of python, numpy and torch, set when the loop starts."})
    amp: bool = field(default=True, metadata={
        "help": "Mixed precision on CUDA: bfloat16 where supported, else float16 with a GradScaler (CPU: fp32)."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda'."})
    metric: str = field(default="", metadata={
        "help": "The figure of evaluate() that decides the best epoch and early stopping ('' = its only one)."})
    higher_is_better: bool = field(default=False, metadata={
        "help": "The metric is better when higher (NDCG) rather than lower (a loss)."})
    patience: int = field(default=0, metadata={
        "help": "Stop after this many evaluated epochs without a better metric, then restore the best "
                "weights (0 = never stop early, keep the last weights)."})
    time_budget_s: float = field(default=0.0, metadata={
        "help": "Stop at the end of the first epoch past this many seconds (0 = no limit)."})
    checkpoint_every: int = field(default=0, metadata={"help": "Steps between checkpoints (0 = none mid-epoch)."})
    checkpoint_epochs: bool = field(default=True, metadata={"help": "Also checkpoint at the end of every epoch."})
    progress: bool = field(default=True, metadata={"help": "tqdm bars (on a terminal) and periodic log lines."})
    log_every: int = field(default=100, metadata={"help": "Steps between log lines when stderr is no terminal."})

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.max_steps < 0 or (self.epochs == 0 and self.max_steps == 0):
            raise ConfigError("epochs and max_steps must be >= 0, and one of them > 0")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.patience < 0 or self.log_every < 0:
            raise ConfigError("warmup_steps, checkpoint_every, patience and log_every must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass
class TrainResult:
    """What a finished `train` reports. `history` has one record per epoch: the mean logs (per item),
    items_per_second, seconds and the hook's and evaluation's figures."""

    steps: int
    epochs: int
    history: list[dict[str, Any]]
    step_losses: list[float]  # the loss of every step (this rank's)
    best: float | None  # the best value of the metric, None without evaluation
    best_epoch: int | None  # 1-based
    stop_reason: Literal["epochs", "max_steps", "patience", "time_budget"]
    seconds: float  # of this call (0 when the run had finished before)
    resumed_from: int  # the step a checkpoint resumed from (0 = a fresh start)
    device: str
    world_size: int


# --------------------------------------------------------------------------------------------------
# device and data parallelism


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank among world_size processes (1 without torchrun) and device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(device: str = "auto") -> DistContext:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group (once).

    device: 'auto' (CUDA when present), 'cpu' or 'cuda' (ConfigError when there is no CUDA device).
    The backend is nccl on CUDA and gloo on CPU; rank r uses cuda:LOCAL_RANK.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError("device = 'cuda' but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=world_size,
                       device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


def shard(global_batches: Sequence[B], rank: int, world_size: int) -> list[B]:
    """This rank's share of an epoch: every world_size-th batch, starting at `rank`.

    Step i of the ranks together sees batches i*W .. i*W + W-1, the global batch of that step; the
    tail that not every rank would get is dropped, so every rank takes the same number of steps.
    """
    usable = len(global_batches) // world_size * world_size
    return list(global_batches[rank:usable:world_size])


def _average_gradients(parameters: Sequence[nn.Parameter], context: DistContext) -> None:
    """Mean of every gradient over the ranks, in one all-reduce (a no-op in one process).

    A parameter without a gradient on some rank counts as zero there; one without a gradient on
    every rank keeps none (AdamW then leaves it alone, as in one process).
    """
    if context.world_size <= 1:
        return
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=context.device)
    dist.all_reduce(present)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p, seen in zip(parameters, present.tolist(), strict=True) if seen])
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for p, seen in zip(parameters, present.tolist(), strict=True):
        if seen:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


def _same_on_every_rank(value: int, context: DistContext) -> bool:
    if context.world_size <= 1:
        return True
    low_high = torch.tensor([value, -value], dtype=torch.int64, device=context.device)
    dist.all_reduce(low_high, op=dist.ReduceOp.MIN)
    return int(low_high[0]) == -int(low_high[1])


# --------------------------------------------------------------------------------------------------
# seeding and RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_states_of_all_ranks(context: DistContext) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout draws differ between ranks), gathered for rank 0's checkpoint."""
    state = _rng_state()
    if context.world_size <= 1:
        return [state]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, state)
    return gathered


# --------------------------------------------------------------------------------------------------
# optimiser and schedule


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     lr_of: Callable[[str], float | None] | None = None,
                     no_decay: Collection[str] = ()) -> list[dict[str, Any]]:
    """AdamW parameter groups of `model`'s trainable parameters.

    lr_of(name) gives a parameter's learning rate, None to leave it out of this run (default: `lr`
    for all). No weight decay on biases and other 1-D tensors, on the weights of norm and
    embedding modules, and on the parameters named in `no_decay` (e.g. codebooks). Parameters with
    requires_grad False are left out. Groups come in the order their first parameter is met.
    """
    exempt = set(no_decay)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():  # LayerNorm, RMSNorm...
            exempt |= {f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group_lr = lr if lr_of is None else lr_of(name)
        if group_lr is None:
            continue
        decay = parameter.ndim >= 2 and name not in exempt
        groups.setdefault((group_lr, decay), []).append(parameter)
    return [{"params": params, "lr": group_lr, "weight_decay": weight_decay if decay else 0.0}
            for (group_lr, decay), params in groups.items()]


def lr_factor(settings: LoopSettings, total_steps: int) -> Callable[[int], float]:
    """The LambdaLR multiplier of step s: (s + 1) / warm-up during the warm-up, then the decay to
    min_lr_ratio at `total_steps` (linear or half-cosine) or 1 (constant)."""
    warmup, floor = settings.warmup_steps, settings.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if settings.schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    return factor


def schedule_length(settings: LoopSettings, steps_per_epoch: int) -> int:
    """Steps the schedule spans: max_steps, or epochs x the first epoch's steps, whichever is smaller."""
    lengths = [n for n in (settings.max_steps, settings.epochs * steps_per_epoch) if n > 0]
    return max(1, min(lengths)) if lengths else 1


def amp_dtype(settings: LoopSettings, device: torch.device) -> torch.dtype | None:
    """bfloat16 / float16 autocast on CUDA when amp is on, else None (fp32)."""
    if not settings.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of `train` (for evaluation code too): a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


def finished(run_dir: Path | None) -> bool:
    """True when `run_dir` holds the checkpoint of a finished run (train would return at once)."""
    if run_dir is None or not checkpoint_path(run_dir).is_file():
        return False
    return bool(torch.load(checkpoint_path(run_dir), map_location="cpu", weights_only=False).get("done"))


def _write(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a temporary file renamed into place)."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _model_state(model: nn.Module, skip: Callable[[str], bool], copy: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict without the `skip` keys; `copy`: cloned (kept while training goes on)."""
    return {k: v.detach().clone() if copy else v for k, v in model.state_dict().items() if not skip(k)}


def _load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], skip: Callable[[str], bool],
                      where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not skip(k)]
    if missing or unexpected:
        raise RuntimeError(f"{where}: the checkpoint does not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A tqdm bar on a terminal, else a log line every `log_every` steps; silent on ranks > 0."""

    def __init__(self, name: str, settings: LoopSettings, context: DistContext, total_steps: int,
                 first_step: int) -> None:
        self.name, self.total, self.first = name, total_steps, first_step
        self.every = settings.log_every
        show = settings.progress and context.is_main
        self.bar = tqdm(total=total_steps, initial=first_step, desc=name, unit="step", leave=False,
                        mininterval=2.0, disable=not (show and sys.stderr.isatty()))
        self.log_lines = show and self.bar.disable and self.every > 0
        self.started = time.perf_counter()

    def update(self, step: int, means: Mapping[str, float], items_per_second: float) -> None:
        self.bar.update(1)
        figures = {k: f"{v:.4g}" for k, v in means.items()} | {"items/s": f"{items_per_second:.1f}"}
        self.bar.set_postfix(figures, refresh=False)
        if self.log_lines and step % self.every == 0:
            per_step = (time.perf_counter() - self.started) / max(1, step - self.first)
            eta = per_step * max(0, self.total - step)
            logger.info("%s step %d/%d: %s, ETA %s", self.name, step, self.total,
                        ", ".join(f"{k}={v}" for k, v in figures.items()), _duration(eta))

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _items(batch: Any) -> int:
    """Items of a batch for the throughput: its len() when it has one, else 1."""
    try:
        return len(batch)
    except TypeError:
        return 1


# --------------------------------------------------------------------------------------------------
# the loop


def train(
    model: nn.Module,
    settings: LoopSettings,
    batches: Callable[[int, int, int], Sequence[B]],
    loss_fn: Callable[[nn.Module, B], tuple[torch.Tensor, Mapping[str, float]]],
    run_dir: Path | None = None,
    *,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[int], Mapping[str, Any]] | None = None,
    lr_of: Callable[[str], float | None] | None = None,
    no_decay: Collection[str] = (),
    frozen_state: Callable[[str], bool] | None = None,
    name: str = "train",
) -> TrainResult:
    """Train `model` in place (see the module docstring); it is left in eval mode.

    batches(epoch, rank, world_size): this rank's batches of `epoch` (0-based), a deterministic
        function of the caller's seed and its arguments; every rank must get as many (see `shard`).
    loss_fn(model, batch): (scalar loss tensor, named float logs); run under autocast on CUDA.
    run_dir: where `checkpoint.pt` goes and is resumed from (None = no checkpoints).
    evaluate(model): figures after each epoch (eval mode, no_grad, autocast); `settings.metric`
        names the one that picks the best epoch.
    on_epoch_end(epoch): after each epoch's steps, before evaluate; may change the model (e.g.
        restart dead codes; then it must do the same on every rank); its figures join the record.
    lr_of, no_decay: see `parameter_groups`.
    frozen_state(key): state_dict keys left out of checkpoints because they never change (a frozen
        pretrained encoder); the model must hold them already when a run resumes.
    Raises ConfigError for a bad device, a checkpoint written under other settings or a metric that
    evaluate does not report; ValueError when nothing is trainable.
    """
    skip = frozen_state or (lambda key: False)
    started = time.perf_counter()

    # -- device, data parallelism, seed
    context = distributed_context(settings.device)
    model.to(context.device)
    seed_everything(settings.seed)

    # -- optimiser, schedule, mixed precision
    groups = parameter_groups(model, settings.lr, settings.weight_decay, lr_of, no_decay)
    parameters = [p for group in groups for p in group["params"]]
    if not parameters:
        raise ValueError(f"{name}: no trainable parameter")
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    steps_per_epoch = len(batches(0, context.rank, context.world_size))
    total_steps = schedule_length(settings, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, total_steps))
    dtype = amp_dtype(settings, context.device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    # -- the run's state, fresh or from the checkpoint
    epoch, index, step = 0, 0, 0  # the data position: the next batch is batches(epoch)[index]
    sums: dict[str, float] = {}  # item-weighted log sums of the current epoch
    epoch_items, epoch_seconds = 0, 0.0
    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    best: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    stop_reason: str | None = None
    resumed_from = 0
    path = checkpoint_path(run_dir) if run_dir is not None else None
    if path is not None and path.is_file():
        checkpoint = torch.load(path, map_location=context.device, weights_only=False)
        changed = [k for k in _RESULT_SETTINGS if checkpoint["settings"].get(k) != getattr(settings, k)]
        if changed:
            raise ConfigError(f"{path} was written with other settings ({', '.join(changed)}); "
                              "remove it or train in another directory")
        _load_model_state(model, checkpoint["model"], skip, str(path))
        epoch, index, step = checkpoint["position"]
        history, step_losses = checkpoint["history"], checkpoint["step_losses"]
        best, best_epoch, bad_epochs = checkpoint["best"], checkpoint["best_epoch"], checkpoint["bad_epochs"]
        resumed_from = step
        if checkpoint["done"]:
            logger.info("%s: finished before (%s)", name, path)
            model.eval()
            return TrainResult(step, epoch, history, step_losses, best, best_epoch, checkpoint["stop_reason"],
                               0.0, resumed_from, str(context.device), context.world_size)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        sums, epoch_items, epoch_seconds = checkpoint["epoch_sums"], checkpoint["epoch_items"], \
            checkpoint["epoch_seconds"]
        best_state = checkpoint["best_state"]
        rng = checkpoint["rng"]
        _set_rng_state(rng[context.rank] if len(rng) == context.world_size else rng[0])
        logger.info("%s: resuming at step %d (epoch %d, batch %d)", name, step, epoch + 1, index)

    def save_checkpoint(done: bool = False) -> None:
        """Rank 0 writes the run's state; every rank takes part (the RNG states are gathered)."""
        if run_dir is None:
            return
        rng_states = _rng_states_of_all_ranks(context)
        if not context.is_main:
            return
        _write(run_dir, {
            "model": _model_state(model, skip), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states,
            "position": (epoch, index, step), "epoch_sums": dict(sums), "epoch_items": epoch_items,
            "epoch_seconds": epoch_seconds, "history": history, "step_losses": step_losses, "best": best,
            "best_epoch": best_epoch, "best_state": best_state, "bad_epochs": bad_epochs, "done": done,
            "stop_reason": stop_reason, "settings": dataclasses.asdict(settings)})

    # -- the loop
    progress = _Progress(name, settings, context, total_steps, step)
    while stop_reason is None:
        epoch_batches = batches(epoch, context.rank, context.world_size)
        if not epoch_batches:
            raise ValueError(f"{name}: epoch {epoch + 1} has no batch for rank {context.rank}")
        if not _same_on_every_rank(len(epoch_batches), context):
            raise RuntimeError(f"{name}: the ranks got different numbers of batches in epoch {epoch + 1}")
        model.train()
        epoch_started = time.perf_counter() - epoch_seconds
        while index < len(epoch_batches):
            batch = epoch_batches[index]
            with autocast(dtype, context.device):
                loss, logs = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            _average_gradients(parameters, context)
            if settings.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            index += 1
            step += 1
            # bookkeeping: item-weighted means of the logs, throughput
            items = _items(batch)
            epoch_items += items
            step_losses.append(float(loss.detach()))
            for key, value in {"loss": step_losses[-1], **logs}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * items
            epoch_seconds = time.perf_counter() - epoch_started
            progress.update(step, {k: v / epoch_items for k, v in sums.items()},
                            epoch_items * context.world_size / max(1e-9, epoch_seconds))
            if settings.max_steps and step >= settings.max_steps:
                break
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                save_checkpoint()

        # -- the end of an epoch (or of the run at max_steps): record, hook, evaluation, early stop
        record: dict[str, Any] = {k: v / max(1, epoch_items) for k, v in sums.items()}
        record.update(epoch=epoch + 1, steps=step,
                      items_per_second=epoch_items * context.world_size / max(1e-9, epoch_seconds),
                      seconds=round(epoch_seconds, 3))
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch))
        if evaluate is not None:
            model.eval()
            with torch.no_grad(), autocast(dtype, context.device):
                figures = dict(evaluate(model))
            record.update(figures)
            key = settings.metric or next(iter(figures), "")
            if key not in figures:
                raise ConfigError(f"{name}: metric {key!r} is not among the evaluation figures {sorted(figures)}")
            value = float(figures[key])
            if best is None or (value > best if settings.higher_is_better else value < best):
                best, best_epoch, bad_epochs = value, epoch + 1, 0
                if settings.patience:
                    best_state = _model_state(model, skip, copy=True)
            else:
                bad_epochs += 1
                if settings.patience and bad_epochs >= settings.patience:
                    stop_reason = "patience"
        history.append(record)
        logger.info("%s epoch %d: %s", name, epoch + 1,
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                              if k != "epoch"))
        epoch, index, sums, epoch_items, epoch_seconds = epoch + 1, 0, {}, 0, 0.0
        if stop_reason is None:
            if settings.max_steps and step >= settings.max_steps:
                stop_reason = "max_steps"
            elif settings.epochs and epoch >= settings.epochs:
                stop_reason = "epochs"
            elif settings.time_budget_s and time.perf_counter() - started > settings.time_budget_s:
                stop_reason = "time_budget"
        if stop_reason is None and settings.checkpoint_epochs:
            save_checkpoint()
    progress.close()

    if best_state is not None:
        _load_model_state(model, best_state, skip, f"{name} (best epoch)")
        best_state = None
    save_checkpoint(done=True)
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("%s: %d steps, %d epochs in %.1f s (%s)", name, step, epoch, seconds, stop_reason)
    return TrainResult(step, epoch, history, step_losses, best, best_epoch, stop_reason, seconds,  # type: ignore[arg-type]
                       resumed_from, str(context.device), context.world_size)
