"""training.downstream.stages on hand-made stages: what is cached, rerun or resumed, and the progress lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from training.downstream.stages import MARKER_FILE, STARTED_FILE, Stage, StageRunner


class Recorder:
    """Stages a -> b -> c and a -> d; each writes a file and records (name, resumed) when it runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.settings = {"a": {"x": 1}, "b": {"y": 2}, "c": {"z": 3}, "d": {"w": 4}}
        self.fail_in: str | None = None
        self.seconds = {"a": 10.0, "b": 100.0, "c": 50.0, "d": 20.0}  # what each stage takes on the fake clock
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def stage(self, name: str, depends: tuple[str, ...] = (), typical: float = 0.0) -> Stage:
        def run(folder: Path, resumed: bool) -> None:
            self.calls.append((name, resumed))
            (folder / "out.txt").write_text(json.dumps(self.settings[name]))
            self.now += self.seconds[name] / 2
            if self.fail_in == name:
                raise RuntimeError(f"stopped in {name}")
            self.now += self.seconds[name] / 2

        return Stage(name, f"stage {name}", f"does {name}", dict(self.settings[name]), run, depends, typical)

    def runner(self, work: Path) -> StageRunner:
        typical = {"a": 20.0, "b": 50.0, "c": 25.0, "d": 10.0}
        stages = [self.stage("a", typical=typical["a"]), self.stage("b", ("a",), typical["b"]),
                  self.stage("c", ("b",), typical["c"]), self.stage("d", ("a",), typical["d"])]
        return StageRunner(work, stages, clock=self.clock)


def test_finished_stages_are_skipped_and_a_changed_setting_reruns_its_dependents(tmp_path: Path) -> None:
    recorder = Recorder()
    report = recorder.runner(tmp_path).run()
    assert recorder.calls == [("a", False), ("b", False), ("c", False), ("d", False)]
    assert report.actions() == dict.fromkeys("abcd", "run")
    assert report.wall_seconds() == {"a": 10.0, "b": 100.0, "c": 50.0, "d": 20.0}
    marker = json.loads((tmp_path / "b" / MARKER_FILE).read_text())
    assert marker["settings"] == {"y": 2} and marker["wall_seconds"] == 100.0 and not marker["resumed"]

    recorder.calls.clear()
    report = recorder.runner(tmp_path).run()
    assert recorder.calls == []
    assert report.actions() == dict.fromkeys("abcd", "cached")
    assert report.wall_seconds()["b"] == 100.0  # the time of the build that made it

    # b's setting changes: b and c (which reads b) run again from the start, d (reads a only) stays
    recorder.settings["b"] = {"y": 5}
    (tmp_path / "c" / "stale.txt").write_text("from the old b")
    report = recorder.runner(tmp_path).run()
    assert recorder.calls == [("b", False), ("c", False)]
    assert report.actions() == {"a": "cached", "b": "run", "c": "run", "d": "cached"}
    assert not (tmp_path / "c" / "stale.txt").exists()  # a stage run from the start gets an empty folder

    # a's setting changes: everything downstream of it runs again
    recorder.calls.clear()
    recorder.settings["a"] = {"x": 2}
    recorder.runner(tmp_path).run()
    assert [name for name, _ in recorder.calls] == ["a", "b", "c", "d"]


def test_an_interrupted_stage_is_resumed_in_its_folder(tmp_path: Path) -> None:
    recorder = Recorder()
    recorder.fail_in = "c"
    with pytest.raises(RuntimeError, match="stopped in c"):
        recorder.runner(tmp_path).run()
    assert (tmp_path / "c" / STARTED_FILE).is_file() and not (tmp_path / "c" / MARKER_FILE).exists()
    assert not (tmp_path / "d").exists()

    recorder.fail_in = None
    recorder.calls.clear()
    (tmp_path / "c" / "checkpoint").write_text("kept")
    report = recorder.runner(tmp_path).run()
    assert recorder.calls == [("c", True), ("d", False)]
    assert report.actions() == {"a": "cached", "b": "cached", "c": "resume", "d": "run"}
    assert (tmp_path / "c" / "checkpoint").read_text() == "kept"  # resumed, not emptied
    assert json.loads((tmp_path / "c" / MARKER_FILE).read_text())["resumed"] is True

    # an interrupted stage whose settings changed meanwhile starts from the start
    recorder.fail_in = "c"
    recorder.settings["c"] = {"z": 4}
    with pytest.raises(RuntimeError):
        recorder.runner(tmp_path).run()
    recorder.fail_in = None
    recorder.settings["c"] = {"z": 5}
    recorder.calls.clear()
    recorder.runner(tmp_path).run()
    assert recorder.calls == [("c", False)]


def test_each_stage_start_logs_its_index_what_it_does_and_etas(tmp_path: Path, caplog) -> None:
    recorder = Recorder()
    with caplog.at_level(logging.INFO, logger="training.downstream.stages"):
        report = recorder.runner(tmp_path).run()
    lines = [r.getMessage() for r in caplog.records]
    starts = [line for line in lines if line.startswith("stage ") and "ETA" in line]
    # before any stage ran: the preset's typical times (20 + 50 + 25 + 10 = 105 s for the whole build)
    assert starts[0] == "stage 1/4: stage a (does a); ETA this stage 20 s, whole build 1 min 45 s"
    # a took 10 s for 20 typical, but 20 typical seconds are too few to judge the machine by
    assert starts[1] == "stage 2/4: stage b (does b); ETA this stage 50 s, whole build 1 min 25 s"
    # after a and b (70 typical seconds, 110 measured): scaled by 110 / 70
    assert starts[2].startswith("stage 3/4: stage c (does c); ETA this stage 39 s, whole build 55 s (the stages so "
                                "far ran 0.64x as fast")
    assert report.summary().endswith("wall time per stage: a 10 s, b 100 s, c 50 s, d 20 s")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training.downstream.stages"):
        recorder.runner(tmp_path).run()
    assert "stage 2/4: stage b: done before with the same settings (took 1 min 40 s); skipped" in [
        r.getMessage() for r in caplog.records]


def test_a_stage_may_only_depend_on_earlier_ones(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="not earlier stages"):
        StageRunner(tmp_path, [recorder.stage("b", ("a",)), recorder.stage("a")])
