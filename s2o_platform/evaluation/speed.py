"""How fast: timing synchronised on GPU (devices and dtypes: `s2o_platform.devices`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from s2o_platform.devices import synchronize


@dataclass
class Timing:
    seconds: list[float]  # one entry per timed call

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> Timing:
    """Wall time of `fn` per call after `warmup` untimed calls, synchronising the GPU around each call
    (kernels are asynchronous: without it a GPU call would look instantaneous)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return Timing(seconds)
