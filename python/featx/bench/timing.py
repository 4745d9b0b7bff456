"""Timing one unit of work (a batch, a pass over files, a whole extraction): warm-up, then
repeated measurement; median and p20/p80 of the repeats.

CPU work is timed with ``time.perf_counter``. CUDA work is timed with CUDA events recorded on the
current stream around each repeat, so the figure is device time, not Python's launch time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

TIMERS = ("perf_counter", "cuda-events")


@dataclass(frozen=True)
class Timing:
    """Seconds per unit of work over ``repeats`` timed repetitions, and how they were taken."""

    median_s: float
    p20_s: float
    p80_s: float
    repeats: int
    timer: str

    @classmethod
    def from_seconds(cls, seconds: list[float], timer: str) -> Timing:
        if not seconds:
            raise ValueError("a timing needs at least one measured repetition")
        if timer not in TIMERS:
            raise ValueError(f"unknown timer {timer!r}; one of {', '.join(TIMERS)}")
        ordered = sorted(seconds)
        return cls(
            median_s=statistics.median(ordered),
            p20_s=_quantile(ordered, 0.2),
            p80_s=_quantile(ordered, 0.8),
            repeats=len(ordered),
            timer=timer,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _quantile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between order statistics (numpy's default), defined for any n >= 1."""
    position = fraction * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def measure(work: Callable[[], object], *, warmup: int, repeats: int, cuda: bool) -> Timing:
    """Runs ``work`` ``warmup`` times untimed, then ``repeats`` times timed."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats ({repeats}) must be >= 1 and warm-up ({warmup}) >= 0")
    for _ in range(warmup):
        work()
    if cuda:
        return Timing.from_seconds(_cuda_event_seconds(work, repeats), "cuda-events")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return Timing.from_seconds(seconds, "perf_counter")


def _cuda_event_seconds(work: Callable[[], object], repeats: int) -> list[float]:
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in pairs]
