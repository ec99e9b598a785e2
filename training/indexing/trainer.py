"""A small, reusable training loop: the parts every stage of indexing and fine-tuning needs.

- AdamW with linear warm-up (`warmup_ratio` of the steps) and linear decay to 0;
- gradient clipping; mixed precision on CUDA (bfloat16 where supported, else float16 with a
  GradScaler); fp32 on CPU;
- seeded: batches come from `make_batches(epoch)`, which must be a deterministic function of the
  epoch (seed it with `settings.seed + epoch`); dropout draws from torch's global generator,
  seeded once here and saved in every checkpoint, so on CPU a fixed seed gives the same run;
- checkpoints (`<checkpoint_dir>/<name>.pt`, written atomically) every `checkpoint_every` steps and
  at the end of each epoch, holding the module, optimiser, scheduler, RNG states and position; a
  killed run resumes from the last one, mid-epoch included; a finished stage is marked done and
  returns at once when run again;
- tqdm progress bars with the running mean of each loss and the throughput (items/s);
- early stopping on a dev criterion (`evaluate()`, lower is better) with `patience` epochs; the
  best weights are restored at the end;
- data parallelism under `torchrun`: when WORLD_SIZE > 1 the process group is created from the
  torch.distributed environment variables, each rank takes every world_size-th batch and the
  gradients are averaged across ranks after every backward pass (the same update as
  DistributedDataParallel, without wrapping the module, so stages may call any of its methods).

Usage::

    trainer = Trainer(module, trainable_parameters, TrainerSettings(epochs=3, lr=1e-3), ckpt_dir, "stage")
    result = trainer.fit(make_batches, step)   # step(batch) -> {"loss": total, "recon": ..., ...}
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSettings:
    """Optimiser and loop settings of one training stage."""

    epochs: int = field(default=1, metadata={"help": "Passes over the batches."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps with a linear LR warm-up."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm (0 = no clipping)."})
    seed: int = field(default=42, metadata={"help": "Seed of torch, numpy and random."})
    amp: bool = field(default=True, metadata={"help": "Mixed precision on CUDA (ignored on CPU)."})
    patience: int = field(default=0, metadata={"help": "Stop after this many epochs without dev gain (0 = never)."})
    checkpoint_every: int = field(default=0, metadata={"help": "Also checkpoint every N steps (0 = per epoch)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})


@dataclass
class FitResult:
    """What a finished `fit` reports."""

    steps: int
    epochs: int
    history: list[dict[str, float]]
    best_score: float | None
    stopped_early: bool
    seconds: float
    resumed: bool


@dataclass
class DistContext:
    """The torch.distributed position of this process (a single process when world_size == 1)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(prefer_cuda: bool = True) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = prefer_cuda and torch.cuda.is_available()
    if world_size > 1:
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return DistContext(rank=dist.get_rank(), world_size=world_size, device=device)
    return DistContext(device=torch.device("cuda") if cuda else torch.device("cpu"))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 over the warm-up steps, then 1 -> 0 linearly."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        remaining = max(1, total_steps - warmup)
        return max(0.0, (total_steps - step) / remaining)

    return factor


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs `step` over `make_batches(epoch)` with the settings above (see the module docstring)."""

    def __init__(self, module: nn.Module, parameters: Iterable[nn.Parameter], settings: TrainerSettings,
                 checkpoint_dir: Path | None = None, name: str = "train", context: DistContext | None = None,
                 skip_in_checkpoint: Callable[[str], bool] | None = None) -> None:
        self.module = module
        # state_dict keys left out of checkpoints (e.g. a frozen pretrained encoder: it never changes)
        self.skip_in_checkpoint = skip_in_checkpoint or (lambda key: False)
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError(f"stage {name!r} has no trainable parameter")
        self.settings = settings
        self.name = name
        self.context = context or DistContext(device=next(module.parameters()).device)
        self.checkpoint_path = Path(checkpoint_dir) / f"{name}.pt" if checkpoint_dir is not None else None
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        cuda = self.context.device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if settings.amp and cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context on CUDA, a no-op elsewhere (also for evaluation code)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # ----------------------------------------------------------------------------------------------

    def _save(self, state: dict[str, Any]) -> None:
        if self.checkpoint_path is None or not self.context.is_main:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_name(f".{self.checkpoint_path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def _load(self) -> dict[str, Any] | None:
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return None
        return torch.load(self.checkpoint_path, map_location=self.context.device, weights_only=False)

    def _module_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.module.state_dict().items() if not self.skip_in_checkpoint(k)}

    def _load_module(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        missing = [k for k in missing if not self.skip_in_checkpoint(k)]
        if missing or unexpected:
            raise RuntimeError(f"{self.name}: checkpoint does not match the module (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")

    def _average_gradients(self) -> None:
        if self.context.world_size <= 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in self.parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.context.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _shard(self, batches: Sequence[Any]) -> Sequence[Any]:
        world = self.context.world_size
        if world <= 1:
            return batches
        usable = len(batches) // world * world  # every rank must take the same number of steps
        return batches[self.context.rank : usable : world]

    def fit(self, make_batches: Callable[[int], Sequence[Any]], step: Callable[[Any], dict[str, torch.Tensor]],
            evaluate: Callable[[], float] | None = None,
            batch_size_of: Callable[[Any], int] | None = None) -> FitResult:
        """Train; `step(batch)` returns a dict with the total "loss" and any other figures to show."""
        settings = self.settings
        started = time.perf_counter()
        steps_per_epoch = len(self._shard(make_batches(0)))
        total_steps = max(1, steps_per_epoch * settings.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(total_steps, settings.warmup_ratio)
        )
        position = {"epoch": 0, "batch": 0, "global_step": 0}
        history: list[dict[str, float]] = []
        best_score: float | None = None
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs = 0
        stopped_early = False
        resumed = False
        seed_everything(settings.seed)
        checkpoint = self._load()
        if checkpoint is not None:
            resumed = True
            self._load_module(checkpoint["module"])
            if checkpoint.get("done"):
                logger.info("%s: already finished (checkpoint %s)", self.name, self.checkpoint_path)
                return FitResult(checkpoint["position"]["global_step"], checkpoint["position"]["epoch"],
                                 checkpoint["history"], checkpoint["best_score"], checkpoint["stopped_early"],
                                 0.0, True)
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            position = checkpoint["position"]
            history = checkpoint["history"]
            best_score = checkpoint["best_score"]
            best_state = checkpoint["best_state"]
            bad_epochs = checkpoint["bad_epochs"]
            _set_rng_state(checkpoint["rng"])
            logger.info("%s: resuming at epoch %d, batch %d", self.name, position["epoch"], position["batch"])

        def snapshot(done: bool = False) -> dict[str, Any]:
            return {
                "module": self._module_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": self.scaler.state_dict(), "position": dict(position),
                "history": history, "best_score": best_score, "best_state": best_state, "bad_epochs": bad_epochs,
                "rng": _rng_state(), "done": done, "stopped_early": stopped_early,
            }

        show = settings.progress and self.context.is_main
        while position["epoch"] < settings.epochs and not stopped_early:
            epoch = position["epoch"]
            batches = self._shard(make_batches(epoch))
            self.module.train()
            sums: dict[str, float] = {}
            seen = 0
            items_seen = 0
            epoch_started = time.perf_counter()
            bar = _progress(len(batches), position["batch"], f"{self.name} {epoch + 1}/{settings.epochs}", show)
            for index in range(position["batch"], len(batches)):
                batch = batches[index]
                with self.autocast():
                    figures = step(batch)
                loss = figures["loss"]
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self._average_gradients()
                if settings.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.parameters, settings.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                scheduler.step()
                position["batch"] = index + 1
                position["global_step"] += 1
                seen += 1
                for key, value in figures.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
                items_seen += batch_size_of(batch) if batch_size_of else 1
                bar.update(1)
                rate = items_seen / max(1e-9, time.perf_counter() - epoch_started)
                bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()} | {"items/s": f"{rate:.1f}"},
                                refresh=False)
                if settings.checkpoint_every and position["global_step"] % settings.checkpoint_every == 0:
                    self._save(snapshot())
            bar.close()
            record = {key: value / max(1, seen) for key, value in sums.items()}
            record["epoch"] = float(epoch + 1)
            record["items_per_second"] = items_seen / max(1e-9, time.perf_counter() - epoch_started)
            record["seconds"] = time.perf_counter() - epoch_started
            if evaluate is not None:
                self.module.eval()
                with torch.no_grad(), self.autocast():
                    score = float(evaluate())
                record["dev"] = score
                if best_score is None or score < best_score:
                    best_score = score
                    bad_epochs = 0
                    if settings.patience:
                        best_state = {k: v.detach().clone() for k, v in self._module_state().items()}
                else:
                    bad_epochs += 1
                    if settings.patience and bad_epochs >= settings.patience:
                        stopped_early = True
                        logger.info("%s: early stop after epoch %d (dev %.4f, best %.4f)", self.name, epoch + 1,
                                    score, best_score)
            history.append(record)
            logger.info("%s epoch %d/%d: %s", self.name, epoch + 1, settings.epochs,
                        ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
            position["epoch"] = epoch + 1
            position["batch"] = 0
            self._save(snapshot())
        if best_state is not None and settings.patience:
            self._load_module(best_state)
            best_state = None
        self._save(snapshot(done=True))
        self.module.eval()
        return FitResult(position["global_step"], position["epoch"], history, best_score, stopped_early,
                         time.perf_counter() - started, resumed)


class _NullBar:
    """Stands in for tqdm when no bar is shown (other ranks, progress off)."""

    def update(self, n: int) -> None:
        return None

    def set_postfix(self, values: dict[str, str], refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def _progress(total: int, initial: int, desc: str, show: bool) -> Any:
    if not show:
        return _NullBar()
    return progress_bar(total=total, initial=initial, desc=desc, unit="batch", leave=False, mininterval=2.0)


def iterate_chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """Consecutive chunks of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
