"""Shared timing for ratio benchmarks: the stage and its raw baseline, measured in one run."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def interleaved_medians(bare: Callable[[], float], stage: Callable[[], float],
                        repeats: int) -> tuple[float, float]:
    """Median throughput of each after one warm-up call; the calls alternate, so drift on a
    shared host hits both alike."""
    bare(), stage()
    b, s = [], []
    for _ in range(repeats):
        b.append(bare())
        s.append(stage())
    return statistics.median(b), statistics.median(s)
