"""Cached, resumable stages of a long build (`lmindexer build-demo`), with progress lines and ETAs.

A build is a list of `Stage`s run in order in a persistent work directory, one folder per stage
(`WORK/<stage name>/`). Each stage declares the settings its output is a function of and the stages
it reads from (`depends`); its *settings hash* covers both its own settings and the hashes of those
stages, so a change anywhere upstream changes the hash of every stage downstream of it.

Markers, in the stage's folder:

- `started.json` when the stage starts: `{"stage", "settings_hash", "started_at"}`;
- `stage.json` when it has finished: `{"stage", "title", "settings_hash", "settings", "depends",
  "wall_seconds", "resumed", "finished_at"}` (`wall_seconds`: of the run that finished it).

What a run does with each stage (`plan`, decided before the first stage starts):

- `cached`: `stage.json` has the current hash and no stage it depends on runs in this build: skipped;
- `resume`: `started.json` has the current hash but the stage never finished (the build was
  interrupted in it): it runs again in the same folder, where a stage with checkpoints picks up from
  them (the stage's own code decides how: see build-demo's stages);
- `run`: anything else (no folder, another hash, or a stage it depends on runs): the folder is
  emptied and the stage runs from the start. A stage with `cache=False` (the export) always runs.

Progress: one log line when each stage starts, naming it, its index, what it does and two ETAs,
the stage's and the whole remaining build's::

    stage 3/6: fine-tune the retriever (300 steps ...); ETA this stage 4 min 10 s, whole build 21 min 40 s

The ETAs start from the preset's typical seconds per stage (measured on a quiet 2-core machine) and,
once stages worth `CALIBRATION_MIN_S` typical seconds have run from the start in this build, are
scaled by how fast this machine turned out to be (their measured over their typical seconds). A
stage's own loop reports finer progress (the training loop's steps and ETA; `training.progress`).
At the end one line gives the wall seconds of every stage (`BuildReport.summary`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from training.progress import duration

logger = logging.getLogger(__name__)

STARTED_FILE = "started.json"
MARKER_FILE = "stage.json"
# Typical seconds of the stages run from the start before the machine's speed is trusted (a few seconds of
# data preparation say little about 15 minutes of training).
CALIBRATION_MIN_S = 60.0

Action = Literal["cached", "resume", "run"]


@dataclass(frozen=True)
class Stage:
    """One stage of a build.

    name: its folder under the work directory and its key in the reports; title: what it is, for people
    ("fine-tune the retriever"); detail: what it does, one clause; settings: JSON-ready values its output is
    a function of; run(folder, resumed): does the work in `folder` (`resumed`: the folder holds what an
    interrupted run of the same settings left); depends: names of earlier stages whose folders it reads;
    typical_seconds: its usual wall time on a quiet 2-core machine (0 = unknown); cache: False for a stage
    that always runs.
    """

    name: str
    title: str
    detail: str
    settings: Mapping[str, Any]
    run: Callable[[Path, bool], Any]
    depends: tuple[str, ...] = ()
    typical_seconds: float = 0.0
    cache: bool = True


@dataclass
class StageRecord:
    """What a build did with one stage: its action, and its wall seconds (this build's, or for a cached
    stage those of the build that made it)."""

    name: str
    action: Action
    seconds: float = 0.0
    settings_hash: str = ""


@dataclass
class BuildReport:
    """The stages of one build in order, and its total wall seconds."""

    records: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0

    def wall_seconds(self) -> dict[str, float]:
        """Stage name -> wall seconds (rounded), for the manifest."""
        return {r.name: round(r.seconds, 1) for r in self.records}

    def actions(self) -> dict[str, str]:
        """Stage name -> 'cached', 'resume' or 'run'."""
        return {r.name: r.action for r in self.records}

    def summary(self) -> str:
        """One line: the build's wall time and each stage's seconds (cached / resumed ones marked)."""
        notes = {"cached": " (cached)", "resume": " (resumed)", "run": ""}
        parts = [f"{r.name} {r.seconds:.0f} s{notes[r.action]}" for r in self.records]
        return f"{duration(self.seconds)} in all; wall time per stage: " + ", ".join(parts)


def settings_hash(settings: Mapping[str, Any], upstream: Sequence[str] = ()) -> str:
    """A short hash of a stage's settings (canonical JSON) and of the hashes of the stages it depends on."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for value in upstream:
        digest.update(value.encode())
    return digest.hexdigest()[:16]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The `stage.json` of a finished stage's folder, else None."""
    return _read(Path(folder) / MARKER_FILE)


class StageRunner:
    """Runs `stages` in order in `work` (module docstring). `clock`: seconds, monotonic (tests fake it);
    `on_stage_end(record)`: called after each stage, cached ones included (a later stage may report them)."""

    def __init__(self, work: Path, stages: Sequence[Stage], clock: Callable[[], float] = time.perf_counter) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for index, stage in enumerate(stages):
            unknown = [d for d in stage.depends if d not in names[:index]]
            if unknown:
                raise ValueError(f"stage {stage.name} depends on {unknown}, which are not earlier stages")
        self.work = Path(work)
        self.stages = list(stages)
        self.clock = clock
        self.on_stage_end: Callable[[StageRecord], None] | None = None
        self.hashes: dict[str, str] = {}
        for stage in self.stages:
            self.hashes[stage.name] = settings_hash(stage.settings, [self.hashes[d] for d in stage.depends])

    def folder(self, name: str) -> Path:
        return self.work / name

    def plan(self) -> dict[str, Action]:
        """Stage name -> what this build will do with it (module docstring)."""
        actions: dict[str, Action] = {}
        for stage in self.stages:
            folder = self.folder(stage.name)
            current = self.hashes[stage.name]
            upstream_runs = any(actions[d] != "cached" for d in stage.depends)
            marker = read_marker(folder)
            started = _read(folder / STARTED_FILE)
            if stage.cache and not upstream_runs and marker is not None and marker.get("settings_hash") == current:
                actions[stage.name] = "cached"
            elif (not upstream_runs and marker is None and started is not None
                  and started.get("settings_hash") == current):
                actions[stage.name] = "resume"
            else:
                actions[stage.name] = "run"
        return actions

    def _speed(self, measured: list[tuple[float, float]]) -> float:
        """Measured over typical seconds of the stages run from the start so far (1 until enough of them)."""
        typical = sum(t for t, _ in measured)
        if typical < CALIBRATION_MIN_S:
            return 1.0
        return sum(s for _, s in measured) / typical

    def _eta(self, stage: Stage, remaining: Sequence[Stage], measured: list[tuple[float, float]]) -> str:
        """'ETA this stage ..., whole build ...' from the typical seconds scaled by the measured speed."""
        speed = self._speed(measured)
        if stage.typical_seconds > 0:
            eta = f"ETA this stage {duration(stage.typical_seconds * speed)}"
        else:
            eta = "no ETA for this stage (the preset gives no typical time)"
        total = sum(s.typical_seconds for s in remaining)
        if total > 0:
            unknown = any(s.typical_seconds <= 0 for s in remaining)
            eta += f", whole build {'at least ' if unknown else ''}{duration(total * speed)}"
        if speed != 1.0:
            eta += f" (the stages so far ran {1 / speed:.2g}x as fast as the preset's typical times)"
        return eta

    def run(self) -> BuildReport:
        """Run the build; returns what it did. A stage's exception propagates (its folder keeps what it
        wrote, so the next build resumes it)."""
        self.work.mkdir(parents=True, exist_ok=True)
        actions = self.plan()
        total = len(self.stages)
        report = BuildReport()
        started = self.clock()
        measured: list[tuple[float, float]] = []  # (typical, wall) of stages run from the start
        cached = [s.name for s in self.stages if actions[s.name] == "cached"]
        to_run = [s for s in self.stages if actions[s.name] != "cached"]
        logger.info("build in %s: %d stages, %s; %s to run%s", self.work, total,
                    f"done before: {', '.join(cached)}" if cached else "none done before",
                    ", ".join(f"{s.name} ({'resumed' if actions[s.name] == 'resume' else 'from the start'})"
                              for s in to_run) or "nothing",
                    f", ETA {duration(sum(s.typical_seconds for s in to_run))} (the preset's typical times)"
                    if any(s.typical_seconds > 0 for s in to_run) else "")
        for index, stage in enumerate(self.stages, start=1):
            folder = self.folder(stage.name)
            action = actions[stage.name]
            label = f"stage {index}/{total}: {stage.title}"
            current = self.hashes[stage.name]
            if action == "cached":
                marker = read_marker(folder) or {}
                seconds = float(marker.get("wall_seconds", 0.0))
                logger.info("%s: done before with the same settings (took %s); skipped", label, duration(seconds))
                self._record(report, StageRecord(stage.name, action, seconds, current))
                continue
            eta = self._eta(stage, [s for s in self.stages[index - 1:] if actions[s.name] != "cached"], measured)
            how = "resuming an interrupted run from its checkpoints; " if action == "resume" else ""
            logger.info("%s (%s); %s%s", label, stage.detail, how, eta)
            if action == "run" and folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            _write(folder / STARTED_FILE, {"stage": stage.name, "settings_hash": current,
                                           "started_at": datetime.now(UTC).isoformat(timespec="seconds")})
            mark = self.clock()
            try:
                stage.run(folder, action == "resume")
            except BaseException:
                logger.error("%s stopped after %s; its folder %s keeps what it wrote: the same build command "
                             "continues from here", label, duration(self.clock() - mark), folder)
                raise
            seconds = self.clock() - mark
            _write(folder / MARKER_FILE, {
                "stage": stage.name, "title": stage.title, "settings_hash": current, "settings": stage.settings,
                "depends": {d: self.hashes[d] for d in stage.depends}, "wall_seconds": round(seconds, 2),
                "resumed": action == "resume", "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})
            if action == "run" and stage.typical_seconds > 0:
                measured.append((stage.typical_seconds, seconds))
            logger.info("stage %d/%d done in %s: %s", index, total, duration(seconds), stage.title)
            self._record(report, StageRecord(stage.name, action, seconds, current))
        report.seconds = self.clock() - started
        return report

    def _record(self, report: BuildReport, record: StageRecord) -> None:
        report.records.append(record)
        if self.on_stage_end is not None:
            self.on_stage_end(record)


__all__ = ["CALIBRATION_MIN_S", "MARKER_FILE", "STARTED_FILE", "BuildReport", "Stage", "StageRecord",
           "StageRunner", "read_marker", "settings_hash"]
