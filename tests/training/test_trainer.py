"""The reusable training loop: determinism, resume after a kill, early stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.indexing.trainer import Trainer, TrainerSettings, linear_schedule


class Killed(RuntimeError):
    pass


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))


def _batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + epoch)
    x = torch.randn(5, 6, 4, generator=generator)
    return [(x[i], x[i].sum(dim=1, keepdim=True)) for i in range(5)]


def _fit(model: nn.Module, directory: Path | None, kill_at: int | None = None, epochs: int = 3):
    settings = TrainerSettings(epochs=epochs, lr=1e-2, seed=3, checkpoint_every=2, progress=False)
    trainer = Trainer(model, model.parameters(), settings, directory, "toy")
    calls = {"n": 0}

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at:
            raise Killed
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return {"loss": loss, "mse": loss.detach()}

    return trainer.fit(_batches, step, batch_size_of=lambda b: len(b[0]))


def test_fixed_seed_gives_the_same_weights() -> None:
    a, b = _model(), _model()
    _fit(a, None)
    _fit(b, None)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    reference = _model()
    _fit(reference, tmp_path / "ref")
    killed = _model()
    with pytest.raises(Killed):
        _fit(killed, tmp_path / "run", kill_at=8)  # mid-epoch 2, after the checkpoint of step 6
    resumed = _model()  # a fresh process: fresh weights, everything comes from the checkpoint
    result = _fit(resumed, tmp_path / "run")
    assert result.resumed and result.steps == 15 and result.epochs == 3
    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # a finished stage returns at once with its record
    again = _fit(_model(), tmp_path / "run")
    assert again.resumed and again.seconds == 0.0 and len(again.history) == 3


def test_early_stopping_restores_the_best_weights() -> None:
    model = _model()
    scores = iter([3.0, 1.0, 2.0, 2.5, 0.5])
    snapshots: list[torch.Tensor] = []
    settings = TrainerSettings(epochs=5, lr=1e-2, patience=2, progress=False)
    trainer = Trainer(model, model.parameters(), settings)

    def step(batch):
        x, y = batch
        return {"loss": ((model(x) - y) ** 2).mean()}

    def evaluate() -> float:
        snapshots.append(model[0].weight.detach().clone())
        return next(scores)

    result = trainer.fit(_batches, step, evaluate)
    assert result.stopped_early and result.epochs == 4 and result.best_score == 1.0
    torch.testing.assert_close(model[0].weight, snapshots[1])


def test_linear_schedule() -> None:
    factor = linear_schedule(10, 0.2)
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
