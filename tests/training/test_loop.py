"""The one training loop (training/loop.py): determinism, resume mid-epoch in the same data order,
early stopping either way, schedules, parameter groups, settings; and two processes under torchrun
train as one process on the same global batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.training import loop_ddp_worker as worker
from tests.training.loop_ddp_worker import write_tiny_encoder
from training.config import build_config
from training.errors import ConfigError
from training.loop import LoopSettings, lr_factor, parameter_groups, shard, train

WORKER = Path(__file__).with_name("loop_ddp_worker.py")  # run as a script, by torchrun
REPO = Path(__file__).resolve().parents[2]


class Stopped(RuntimeError):
    """Stands for a killed job."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))


DATA = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))


def _batches(epoch: int, rank: int, world_size: int) -> list[np.ndarray]:
    """5 batches of 6 rows per epoch, shuffled by (seed 100, epoch)."""
    order = np.random.default_rng([100, epoch]).permutation(len(DATA))
    return shard([order[i : i + 6] for i in range(0, len(DATA), 6)], rank, world_size)


def _run(model: nn.Module, run_dir: Path | None, seen: list[tuple[int, ...]] | None = None,
         stop_at: int | None = None, **changes):
    settings = LoopSettings(**{"epochs": 3, "lr": 1e-2, "seed": 3, "warmup_steps": 2, "checkpoint_every": 4,
                               "checkpoint_epochs": False, "progress": False, **changes})
    calls = {"n": 0}

    def loss_fn(model: nn.Module, rows: np.ndarray):
        calls["n"] += 1
        if stop_at is not None and calls["n"] == stop_at:
            raise Stopped
        if seen is not None:
            seen.append(tuple(rows.tolist()))
        x = DATA[rows]
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    return train(model, settings, _batches, loss_fn, run_dir, name="toy")


def test_a_fixed_seed_gives_the_same_weights() -> None:
    a, b = _model(), _model()
    _run(a, None)
    _run(b, None)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_run_stopped_mid_epoch_resumes_with_the_batches_the_whole_run_took(tmp_path: Path) -> None:
    whole_batches: list[tuple[int, ...]] = []
    whole_model = _model()
    whole = _run(whole_model, tmp_path / "whole", whole_batches)
    assert whole.steps == 15 and whole.epochs == 3 and whole.stop_reason == "epochs"
    assert len(set(whole_batches[:5])) == 5 and whole_batches[:5] != whole_batches[5:10]  # reshuffled per epoch

    before_stop: list[tuple[int, ...]] = []
    with pytest.raises(Stopped):  # steps 1..10 done (checkpoints after 4 and 8), stopped in step 11
        _run(_model(), tmp_path / "run", before_stop, stop_at=11)
    assert before_stop == whole_batches[:10]
    after_resume: list[tuple[int, ...]] = []
    resumed_model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))  # fresh weights
    resumed = _run(resumed_model, tmp_path / "run", after_resume)
    assert resumed.resumed_from == 8  # the checkpoint after step 8 (epoch 2, batch 3 of 5)
    assert after_resume == whole_batches[8:]  # the same data order from there on
    np.testing.assert_allclose(resumed.step_losses, whole.step_losses, rtol=1e-6)  # dropout draws resume too
    for p, q in zip(whole_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert [r["mse"] for r in resumed.history] == pytest.approx([r["mse"] for r in whole.history], rel=1e-6)
    # a finished run returns at once with its record and weights
    again_model = _model()
    again = _run(again_model, tmp_path / "run", after_resume)
    assert again.seconds == 0.0 and again.steps == 15 and len(again.history) == 3
    assert len(after_resume) == 7  # no batch was trained again
    torch.testing.assert_close(again_model[0].weight, whole_model[0].weight)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        _run(_model(), tmp_path, stop_at=6)
    with pytest.raises(ConfigError, match=r"other settings.*lr"):
        _run(_model(), tmp_path, lr=5e-3)


@pytest.mark.parametrize("higher_is_better", [False, True])
def test_early_stopping_restores_the_best_weights(higher_is_better: bool) -> None:
    model = _model()
    losses = [3.0, 1.0, 2.0, 2.5, 0.5]
    scores = iter([-v for v in losses] if higher_is_better else losses)
    snapshots: list[torch.Tensor] = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        snapshots.append(model[0].weight.detach().clone())
        return {"other": 0.0, "dev": next(scores)}

    settings = LoopSettings(epochs=5, lr=1e-2, patience=2, metric="dev", higher_is_better=higher_is_better,
                            progress=False)
    result = train(model, settings, _batches, lambda m, rows: (((m(DATA[rows])) ** 2).mean(), {}),
                   evaluate=evaluate)
    assert result.stop_reason == "patience" and result.epochs == 4 and result.best_epoch == 2
    assert result.best == (-1.0 if higher_is_better else 1.0)
    assert [r["dev"] for r in result.history] == [s * (-1 if higher_is_better else 1) for s in losses[:4]]
    torch.testing.assert_close(model[0].weight, snapshots[1])


def test_max_steps_ends_a_run_mid_epoch_and_the_hook_runs_each_epoch() -> None:
    ends: list[int] = []
    settings = LoopSettings(epochs=0, max_steps=7, lr=1e-2, progress=False)
    result = train(_model(), settings, _batches, lambda m, rows: ((m(DATA[rows]) ** 2).mean(), {}),
                   on_epoch_end=lambda epoch: ends.append(epoch) or {"hook": epoch})
    assert result.steps == 7 and result.stop_reason == "max_steps" and len(result.step_losses) == 7
    assert ends == [0, 1] and [r["hook"] for r in result.history] == [0, 1]


def test_schedules() -> None:
    linear = lr_factor(LoopSettings(warmup_steps=2), 10)
    assert [round(linear(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cosine = lr_factor(LoopSettings(schedule="cosine", warmup_steps=1, min_lr_ratio=0.05), 11)
    assert cosine(0) == 1.0 and cosine(1) == 1.0 and cosine(11) == pytest.approx(0.05)
    assert cosine(6) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    constant = lr_factor(LoopSettings(schedule="constant", warmup_steps=4), 100)
    assert [constant(s) for s in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]


def test_parameter_groups_exempt_biases_norms_embeddings_and_named_ones() -> None:
    model = nn.ModuleDict({"embed": nn.Embedding(5, 4), "norm": nn.LayerNorm(4), "proj": nn.Linear(4, 4),
                           "head": nn.Linear(4, 2), "frozen": nn.Linear(4, 4)})
    model["frozen"].requires_grad_(False)
    model.register_parameter("codebooks", nn.Parameter(torch.zeros(2, 3, 4)))
    groups = parameter_groups(model, 1e-3, 0.1, lr_of=lambda name: 5e-3 if name.startswith("head") else 1e-3,
                              no_decay=("codebooks",))
    named = {id(p): n for n, p in model.named_parameters()}
    summary = {(g["lr"], g["weight_decay"]): sorted(named[id(p)] for p in g["params"]) for g in groups}
    assert summary == {
        (1e-3, 0.0): ["codebooks", "embed.weight", "norm.bias", "norm.weight", "proj.bias"],
        (1e-3, 0.1): ["proj.weight"],
        (5e-3, 0.1): ["head.weight"],
        (5e-3, 0.0): ["head.bias"],
    }
    only_head = parameter_groups(model, 1e-3, 0.1, lr_of=lambda name: 1e-3 if name.startswith("head") else None)
    assert sum(len(g["params"]) for g in only_head) == 2


def test_shard_gives_every_rank_as_many_batches() -> None:
    batches = [[i] for i in range(7)]
    assert shard(batches, 0, 1) == batches
    assert shard(batches, 0, 2) == [[0], [2], [4]] and shard(batches, 1, 2) == [[1], [3], [5]]


def test_settings_are_typed_and_unknown_keys_are_errors() -> None:
    assert build_config(LoopSettings, {"epochs": 2, "schedule": "cosine"}).schedule == "cosine"
    with pytest.raises(ConfigError, match=r"unknown setting.*warmup_ratio"):
        build_config(LoopSettings, {"warmup_ratio": 0.1})
    with pytest.raises(ConfigError, match="schedule must be one of"):
        build_config(LoopSettings, {"schedule": "step"})
    with pytest.raises(ConfigError, match="one of them > 0"):
        LoopSettings(epochs=0, max_steps=0)


@pytest.mark.slow
def test_two_processes_under_torchrun_train_as_one_process_on_the_same_global_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuning and an indexer stage (nocode, level 0), 4 steps each, on CPU with gloo: 2 ranks
    with batches of 4 (torchrun) against 1 process with batches of 8 (this one, meanwhile) over the
    same seeded data order.

    Without dropout and with losses that are means over equally many items per rank, the averaged
    gradient of the ranks is the gradient of the global batch, so the parameters must agree up to
    float rounding (summation order): atol 1e-5, rtol 1e-4 after 4 AdamW steps (measured: <= 2e-6).
    Except the key part of attention biases: softmax is shift-invariant, so their exact gradient is
    zero and AdamW turns the float noise of either run into steps of up to lr; they are left out."""
    monkeypatch.setenv("LMINDEXER_CACHE_DIR", "off")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    encoder = tmp_path / "encoder"
    write_tiny_encoder(encoder)
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(WORKER), str(tmp_path / "two"), "4", str(encoder)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        (tmp_path / "one").mkdir()
        worker.finetune(tmp_path / "one", 8)
        worker.indexer_stage(tmp_path / "one", 8, encoder)
        _, stderr = two.communicate(timeout=300)
    finally:
        two.kill()
    assert two.returncode == 0, stderr[-3000:]
    for kind in ("finetune", "indexer"):
        a = torch.load(tmp_path / "two" / f"{kind}.pt")
        b = torch.load(tmp_path / "one" / f"{kind}.pt")
        assert a["world_size"] == 2 and b["world_size"] == 1 and a["steps"] == b["steps"] == 4
        initial = torch.load(tmp_path / "one" / f"{kind}-initial.pt")
        moved = [k for k in b["state"] if not torch.equal(b["state"][k], initial[k])]
        assert len(moved) > 10, kind  # the steps trained the model
        two_state, one_state = _without_key_biases(a["state"]), _without_key_biases(b["state"])
        for key, value in one_state.items():
            torch.testing.assert_close(two_state[key], value, atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


def _without_key_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state with the key part of every attention bias set to 0 (q, k, v / k, v stacked in that order)."""
    out = dict(state)
    for key, value in state.items():
        if key.endswith("self_qkv.bias"):
            d = len(value) // 3
            out[key] = torch.cat([value[:d], torch.zeros(d), value[2 * d :]])
        elif key.endswith("kv.bias"):  # cross_kv of the ID decoder, kv of the reconstructor
            d = len(value) // 2
            out[key] = torch.cat([torch.zeros(d), value[d:]])
    return out
