"""Progress: a tqdm bar on a terminal only; elsewhere periodic log lines, never carriage returns."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm.auto import tqdm

from training.progress import LoggedProgress, progress_bar


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_without_a_terminal_progress_is_logged_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="training.progress")
    bar = LoggedProgress(total=100, initial=20, desc="finetune", unit="step", interval_s=30.0, clock=clock)
    for _ in range(10):  # 10 steps in 10 s: no line yet
        clock.now += 1.0
        bar.update(1)
    assert caplog.messages == []
    clock.now += 20.0  # 30 s after the start: one line, with the rate of what this run did (not `initial`)
    bar.set_postfix(loss="0.412")
    bar.update(10)
    assert caplog.messages == ["finetune: 40/100 step (40%), 0.667 step/s, ETA 1 min 30 s, loss=0.412"]
    clock.now += 5.0
    bar.update(1)  # within the interval: nothing
    assert len(caplog.messages) == 1
    bar.close()
    bar.close()  # once
    assert caplog.messages[-1].startswith("finetune: 41/100 step (41%)") and len(caplog.messages) == 2
    assert all("\r" not in m for m in caplog.messages)


def test_an_iterable_is_passed_through_and_the_last_line_says_how_long(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="training.progress")

    def items():
        for i in range(5):
            clock.now += 50.0
            yield i

    assert list(LoggedProgress(items(), total=5, desc="embed", unit="batch", clock=clock)) == [0, 1, 2, 3, 4]
    assert len(caplog.messages) == 5  # 50 s per item > the 30 s interval: a line per item, then the final one
    assert caplog.messages[-1] == "embed: 5/5 batch (100%), 0.02 batch/s, took 4 min 10 s"
    sized = LoggedProgress(range(7), desc="x", clock=clock)
    assert sized.total == 7


def test_progress_bar_draws_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", _Stream(tty=True))
    drawn = progress_bar(range(3), desc="d", unit="batch")
    assert isinstance(drawn, tqdm) and list(drawn) == [0, 1, 2]
    monkeypatch.setattr("sys.stderr", _Stream(tty=False))
    logged = progress_bar(range(3), desc="d", unit="batch")
    assert isinstance(logged, LoggedProgress) and list(logged) == [0, 1, 2]
    off = progress_bar(range(3), desc="d", disable=True)
    assert list(off) == [0, 1, 2]
    off.update(1)
    off.set_postfix(loss="1")
    off.close()
    assert isinstance(progress_bar(total=5, disable=True), tqdm)


def test_transformers_bars_are_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.utils import logging as transformers_logging

    from training.progress import library_bars_on_terminal_only

    transformers_logging.enable_progress_bar()
    try:
        monkeypatch.setattr("sys.stderr", _Stream(tty=True))
        library_bars_on_terminal_only()
        assert transformers_logging.is_progress_bar_enabled()
        monkeypatch.setattr("sys.stderr", _Stream(tty=False))
        library_bars_on_terminal_only()
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()


def test_transformers_bars_follow_the_runs_progress_and_save_pretrained_logs_no_bar(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """On a terminal transformers' bars stay unless the run's progress is off; without one, neither the
    "Loading weights" nor the "Writing model shards" bar (save_pretrained) writes to the log."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as transformers_logging

    from training.progress import library_bars

    was_enabled = transformers_logging.is_progress_bar_enabled()
    model = BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8, max_position_embeddings=8))
    try:
        transformers_logging.enable_progress_bar()
        monkeypatch.setattr("sys.stderr", _Stream(tty=True))
        library_bars(progress=True)
        assert transformers_logging.is_progress_bar_enabled()  # a terminal with progress on: unchanged
        library_bars(progress=False)
        assert not transformers_logging.is_progress_bar_enabled()

        transformers_logging.enable_progress_bar()
        log = _Stream(tty=False)
        monkeypatch.setattr("sys.stderr", log)
        model.save_pretrained(tmp_path / "with-bars")
        assert "Writing model shards" in log.getvalue()  # the leak: a bar's carriage returns in a log file
        log.seek(0)
        log.truncate()
        logged = progress_bar(range(2), desc="d")  # a loop that finds no terminal turns them off
        assert isinstance(logged, LoggedProgress) and not transformers_logging.is_progress_bar_enabled()
        model.save_pretrained(tmp_path / "without-bars")
        assert "Writing model shards" not in log.getvalue() and "\r" not in log.getvalue()
    finally:
        (transformers_logging.enable_progress_bar if was_enabled else transformers_logging.disable_progress_bar)()
