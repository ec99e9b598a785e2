"""Progress of long loops outside the training loop (embedding a corpus, caching encoder states, beam
search over an evaluation set): a tqdm bar on a terminal, a log line every ``LOG_INTERVAL_S`` otherwise.
(The training loop, ``training.loop``, reports its steps the same way with its own ``log_every`` setting.)

A bar redraws itself with carriage returns, which in a log file (``make run > build.log``, CI, a
container's log) becomes one unreadable line that grows for minutes. So ``progress_bar`` draws a
bar only when standard error (where tqdm writes) is a terminal; elsewhere it logs, through
``logging``, lines such as::

    finetune: 120/500 step (24%), 3.1 step/s, ETA 2 min 03 s, loss=0.412

at most once per ``LOG_INTERVAL_S`` seconds and once when the loop ends. It takes the tqdm arguments
the training code uses (``desc``, ``total``, ``initial``, ``unit``, ``disable``, ``leave``,
``mininterval``) and the bar's methods (iteration, ``update``, ``set_postfix``, ``close``), so it is a
drop-in replacement for ``tqdm(...)``.

transformers draws bars of its own ("Loading weights" at ``from_pretrained``, "Writing model shards" at
``save_pretrained``) through one switch of its own. ``library_bars`` turns that switch off when standard
error is not a terminal, or when a run's progress is off; it never turns it on, so on a terminal with
progress on transformers behaves as it always did (and ``HF_HUB_DISABLE_PROGRESS_BARS`` still rules).
It runs when this module is imported (every module that loads or saves a model imports this one, or
``training.encoder``, which does), whenever ``progress_bar`` finds no terminal, and at the start of the
runs that take a ``progress`` setting (learn-ids with LMIndexer, fine-tuning, the recommender, build-demo).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

logger = logging.getLogger(__name__)

# Seconds between two progress lines when no terminal shows a bar: often enough to see a job move,
# rare enough that a 30-minute build logs about 60 lines per loop rather than thousands.
LOG_INTERVAL_S = 30.0


def duration(seconds: float) -> str:
    """'45 s', '2 min 03 s', '1 h 05 min' (the progress lines' and build-demo's stage ETAs' format)."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LoggedProgress:
    """The tqdm methods the training loops use, reported as periodic log lines (no terminal).

    ``interval_s``: the least time between two lines (the final line at ``close`` is always written).
    ``clock``: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str | None = None, total: float | None = None,
                 initial: float = 0, unit: str = "it", interval_s: float = LOG_INTERVAL_S,
                 clock: Any = time.monotonic) -> None:
        self.iterable = iterable
        self.desc = desc or "progress"
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.n = initial
        self.unit = unit
        self.interval_s = interval_s
        self._clock = clock
        self._initial = initial
        self._started = clock()
        self._last_line = self._started
        self._postfix = ""
        self._closed = False
        self._logged_n: float | None = None  # n at the last line (the final line is not repeated)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LoggedProgress without an iterable cannot be iterated; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def line(self) -> str:
        """The progress line as it would be logged now."""
        elapsed = self._clock() - self._started
        done = self.n - self._initial  # what this run did (a resumed run starts at `initial`)
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n:g}"]
        if self.total:
            parts[0] += f"/{self.total:g} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {duration((self.total - self.n) / rate)}")
        elif self._closed or (self.total and self.n >= self.total):
            parts.append(f"took {duration(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; log a line when ``interval_s`` has passed since the last one."""
        self.n += n
        now = self._clock()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            self._logged_n = self.n
            logger.info("%s", self.line())

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Figures appended to the next line (``loss=0.412``), as tqdm's ``set_postfix``."""
        values = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Rename the loop in later lines."""
        self.desc = desc or self.desc

    def close(self) -> None:
        """Log the final line (once, unless the last periodic line already said the same)."""
        if self._closed:
            return
        self._closed = True
        if self._logged_n != self.n:
            logger.info("%s", self.line())


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str | None = None, total: float | None = None,
                 initial: float = 0, unit: str = "it", disable: bool = False, leave: bool = True,
                 mininterval: float = 0.1, interval_s: float = LOG_INTERVAL_S) -> Any:
    """A progress reporter for a loop: tqdm on a terminal, ``LoggedProgress`` elsewhere, nothing when
    ``disable``.

    The arguments are tqdm's (``leave`` and ``mininterval`` apply to the bar only); ``interval_s`` is
    the least number of seconds between two log lines. Whether standard error is a terminal is asked
    at each call, so a redirected run logs and an interactive one draws.
    """
    if disable:  # tqdm's own pass-through: iteration and every method work, nothing is drawn
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave,
                    mininterval=mininterval)
    library_bars()
    return LoggedProgress(iterable, desc=desc, total=total, initial=initial, unit=unit, interval_s=interval_s)


def library_bars(progress: bool = True) -> None:
    """Turn transformers' own bars off ("Loading weights" at every ``from_pretrained``, "Writing model
    shards" at every ``save_pretrained``) when ``progress`` is off or standard error is not a terminal.
    Nothing changes on a terminal with progress on (it never turns them back on)."""
    if not progress or not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()


def library_bars_on_terminal_only() -> None:
    """``library_bars()``: transformers' bars off unless standard error is a terminal; call it before
    loading or saving a model."""
    library_bars()


library_bars()  # a run whose standard error is a log file never draws transformers' bars

__all__ = ["LOG_INTERVAL_S", "LoggedProgress", "duration", "library_bars", "library_bars_on_terminal_only",
           "progress_bar"]
