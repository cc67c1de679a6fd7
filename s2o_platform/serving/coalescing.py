"""Adaptive batching: one worker thread, and whatever waits when it frees up runs next, merged.

Serve's `@serve.batch` closes a batch after `batch_wait_timeout_s` whether or not the model is free,
so under load it queues many small batches behind the running one (measured: 1.6 requests per
forward pass at 32 concurrent clients). `CoalescingRunner` merges every item waiting when the model
thread becomes free into one forward pass (same key only, up to `max_items` items and `max_weight`
tiles), so the forward-pass size follows the load: 1 when idle, the budget when saturated, with no
added wait at low load.

Fairness: a large request is submitted as several items with increasing `turn` (its first chunk of
tiles is turn 0, the next turn 1, ...), and passes are filled in (turn, arrival) order, so a small
request that arrives while a large one runs goes into the very next pass instead of waiting for
the large one to finish. Items whose awaiter went away (client gone, request timed out) are dropped
before the next pass, and counted in `dropped_weight`.

Pure asyncio, no Ray: unit-tested on its own (tests/serving/test_serving_coalescing.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence


@dataclass
class _Pending:
    key: Hashable
    value: Any
    future: asyncio.Future
    weight: int
    turn: int
    arrival: int


class CoalescingRunner:
    """Runs `run(values, key) -> results` on `executor`, one call at a time, merging waiting items.

    Args:
        run: called in the executor with up to `max_items` values that share `key`; returns one
            result per value, in order.
        max_items: the most values per call.
        executor: where `run` executes (one thread: calls never overlap anyway).
        on_run: optional callback with the values of each call, before it runs (metrics).
        max_weight: the most total weight (tiles) per call; an item heavier than this still runs, alone.
    """

    def __init__(
        self,
        run: Callable[[list, Hashable], Sequence],
        max_items: int,
        executor: Executor,
        on_run: Callable[[list], None] | None = None,
        max_weight: int | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_weight is not None and max_weight < 1:
            raise ValueError(f"max_weight must be >= 1, got {max_weight}")
        self.run, self.max_items, self.executor, self.on_run = run, max_items, executor, on_run
        self.max_weight = max_weight
        self.pending: list[_Pending] = []
        self._drainer: asyncio.Task | None = None
        self._arrivals = 0
        self.calls = 0
        self.dropped_weight = 0  # weight of items dropped because their awaiter went away

    async def submit(
        self,
        items: Sequence[tuple[Hashable, Any]],
        weights: Sequence[int] | None = None,
        turns: Sequence[int] | None = None,
    ) -> list:
        """[(key, value), ...] -> their results, once the calls that include them have run.

        `weights` (default 1 each) count against `max_weight`; `turns` (default 0 each) order items
        before arrival does (see the module docstring). A failing call fails only the items in it (their
        awaiters get its exception); cancelling the awaiter drops the items not yet run."""
        loop = asyncio.get_running_loop()
        weights = weights or [1] * len(items)
        turns = turns or [0] * len(items)
        entries = []
        for (key, value), weight, turn in zip(items, weights, turns):
            self._arrivals += 1
            entries.append(_Pending(key, value, loop.create_future(), int(weight), int(turn), self._arrivals))
        self.pending.extend(entries)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        try:
            return list(await asyncio.gather(*(e.future for e in entries)))
        except BaseException:
            # one item failed, or the awaiter went away: the submission's other items are not run either
            for entry in entries:
                if not entry.future.done():
                    entry.future.cancel()
            raise

    def _prune(self) -> None:
        """Drop waiting items whose awaiter went away (a waiting item's future is done only when cancelled)."""
        live = []
        for entry in self.pending:
            if entry.future.done():
                self.dropped_weight += entry.weight
            else:
                live.append(entry)
        self.pending = live

    def pending_weight(self) -> dict[Hashable, int]:
        """Waiting weight per key: what the next calls will run."""
        self._prune()
        out: dict[Hashable, int] = {}
        for entry in self.pending:
            out[entry.key] = out.get(entry.key, 0) + entry.weight
        return out

    def take_group(self) -> list[_Pending]:
        """The next call's items: in (turn, arrival) order, the first waiting item's key, and after it the
        items with that key up to `max_items` items and `max_weight` weight. Items whose awaiter went
        away (future already done) are dropped and their weight counted."""
        self._prune()
        live = sorted(self.pending, key=lambda e: (e.turn, e.arrival))
        group: list[_Pending] = []
        rest: list[_Pending] = []
        weight = 0
        for entry in live:
            fits = self.max_weight is None or not group or weight + entry.weight <= self.max_weight
            if entry.key == live[0].key and len(group) < self.max_items and fits:
                group.append(entry)
                weight += entry.weight
            else:
                rest.append(entry)
        self.pending = rest
        return group

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            group = self.take_group()
            if not group:
                continue
            self.calls += 1
            values = [e.value for e in group]
            try:
                if self.on_run is not None:
                    self.on_run(values)
                results = await loop.run_in_executor(self.executor, self.run, values, group[0].key)
                if len(results) != len(group):
                    raise RuntimeError(f"run returned {len(results)} results for {len(group)} items")
            except Exception as err:  # noqa: BLE001 - handed to exactly the awaiters of this call
                for entry in group:
                    if not entry.future.done():
                        entry.future.set_exception(err)
                continue
            for entry, result in zip(group, results):
                if not entry.future.done():
                    entry.future.set_result(result)
