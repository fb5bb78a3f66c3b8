"""Progress of a long loop, wherever the output goes.

On an interactive terminal (stderr is a TTY) a tqdm bar. Otherwise (``make demo``, ``dvc
repro``, a Prefect task log, CI) one plain line on stdout at most every
``MOFI_PROGRESS_SECONDS`` seconds (default 30; 0 = a line at every update) and a last one at
``close``::

    train: step 1200/5000 (24%) loss 3.1416 | 41.2 step/s | ETA 1m32s
    train: step 5000/5000 (100%) loss 2.7183 | 40.9 step/s | done in 2m02s

Throughput counts only what this process did (not the ``start`` items of a resume, nor items
passed with ``resumed=True``); with an unknown total the percentage and the ETA are left out.
Callers update per batch or per shard, never per sample: an update is one clock read.

This module sits at the bottom of the package: it imports nothing from ``mofi_core``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

ENV_VAR = "MOFI_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between two progress lines, from ``MOFI_PROGRESS_SECONDS`` (default 30)."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number of seconds >= 0: set it to 0 (a "
                         f"progress line at every update), a positive number of seconds between "
                         f"lines, or unset it (default {DEFAULT_SECONDS:g})")
    return value


def format_duration(seconds: float) -> str:
    """``14s``, ``1m32s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(per_s: float, unit: str) -> str:
    """``41.2 step/s``; below one per second, the seconds per item (``40.0 s/shard``)."""
    if per_s >= 1:
        return f"{per_s:.1f} {unit}/s"
    return f"{1 / per_s:.1f} s/{unit}"


def _format_value(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value)


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, OSError, ValueError):  # replaced, closed or detached stderr
        return False


class Progress:
    """Counts ``done`` of ``total`` ``unit``\\s of the loop ``label``; a context manager.

    ``update(done, **fields)`` sets the count, ``advance(n, **fields)`` adds to it; ``fields``
    (``loss=3.14``, ``kept=1200``) are shown after the count and kept until given again.
    ``enabled=False`` (every rank but 0 under torchrun) shows nothing. ``every_s`` overrides
    ``MOFI_PROGRESS_SECONDS``; ``tty`` overrides the terminal check; ``stream`` (default: the
    current ``sys.stdout``) receives the lines; ``clock`` is for tests.
    """

    def __init__(self, label: str, total: int | None, unit: str = "item", *, start: int = 0,
                 every_s: float | None = None, enabled: bool = True, tty: bool | None = None,
                 stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # read even when disabled: a bad value fails every rank the same way
        self.every_s = interval_from_env() if every_s is None else float(every_s)
        if not self.every_s >= 0:
            raise ValueError(f"every_s={every_s!r}: seconds between progress lines must be >= 0")
        self.label, self.total, self.unit = label, total, unit
        self.start = self.done = start
        self.enabled = enabled
        self.stream = stream
        self.clock = clock
        self.fields: dict[str, Any] = {}
        self._resumed = 0  # items counted without work done here (resumed shards)
        self._t0 = self._last = clock()
        self._closed = False
        self._bar = None
        if enabled and (_stderr_is_tty() if tty is None else tty):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit=unit, desc=label, leave=False)

    # --- counting --------------------------------------------------------------------------

    def update(self, done: int, **fields: Any) -> None:
        """``done`` items so far (this run's count: it includes ``start``)."""
        self.done = done
        self._changed(fields)

    def advance(self, n: int = 1, *, resumed: bool = False, **fields: Any) -> None:
        """``n`` more items; ``resumed=True`` for items found already done (a skipped shard),
        which count towards the total but not the throughput."""
        self.done += n
        if resumed:
            self._resumed += n
        self._changed(fields)

    def _changed(self, fields: dict[str, Any]) -> None:
        if not self.enabled or self._closed:
            return
        self.fields.update(fields)
        if self._bar is not None:  # tqdm limits its own redraws
            if fields:
                self._bar.set_postfix_str(self._fields_text(), refresh=False)
            self._bar.update(self.done - self._bar.n)
            return
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(self.line(now))

    # --- the line --------------------------------------------------------------------------

    def rate(self, now: float | None = None) -> float | None:
        """Items per second done by this process since it started; None before any."""
        elapsed = (self.clock() if now is None else now) - self._t0
        worked = self.done - self.start - self._resumed
        if elapsed <= 0 or worked <= 0:
            return None
        return worked / elapsed

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate; None with an unknown total or rate."""
        rate = self.rate(now)
        if self.total is None or rate is None:
            return None
        return max(0, self.total - self.done) / rate

    def _fields_text(self) -> str:
        return " ".join(f"{k} {_format_value(v)}" for k, v in self.fields.items())

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = self.clock() if now is None else now
        count = f"{self.unit} {self.done}"
        if self.total is not None:
            pct = 100 if self.total <= 0 else math.floor(100 * self.done / self.total)
            count += f"/{self.total} ({pct}%)"
        head = " ".join(p for p in (f"{self.label}: {count}", self._fields_text()) if p)
        rate = self.rate(now)
        parts = [head, format_rate(rate, self.unit) if rate else f"? {self.unit}/s"]
        if final:
            finished = self.total is None or self.done >= self.total
            parts.append(f"{'done in' if finished else 'stopped after'} "
                         f"{format_duration(now - self._t0)}")
        elif self.total is not None:
            eta = self.eta(now)
            parts.append(f"ETA {format_duration(eta) if eta is not None else '?'}")
        return " | ".join(parts)

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    # --- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """The last line (or the bar removed); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._print(self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
