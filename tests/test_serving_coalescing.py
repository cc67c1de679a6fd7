"""CoalescingRunner: merging the batches that wait while the model thread is busy (pure asyncio, no Ray)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from s2o_platform.serving.coalescing import CoalescingRunner


class GatedModel:
    """A fake model whose first call blocks until released, recording every call's values and key."""

    def __init__(self):
        self.calls: list[tuple[list, object]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, values, key):
        self.calls.append((list(values), key))
        self.started.set()
        self.gate.wait(5)
        if any(v == "boom" for v in values):
            raise ValueError("bad tile")
        return [f"{key}:{v}" for v in values]


async def started(model: GatedModel) -> None:
    while not model.started.is_set():
        await asyncio.sleep(0.001)


def run(coro):
    return asyncio.run(coro)


def test_batches_waiting_while_busy_are_merged_into_one_call():
    model = GatedModel()
    observed = []

    async def scenario():
        runner = CoalescingRunner(model, max_items=8, executor=ThreadPoolExecutor(1), on_run=observed.append)
        first = asyncio.ensure_future(runner.submit([(4, "a")]))
        await started(model)  # the model thread is now busy with "a"
        later = [asyncio.ensure_future(runner.submit([(4, v)])) for v in "bcd"]
        pair = asyncio.ensure_future(runner.submit([(4, "e"), (4, "f")]))
        await asyncio.sleep(0.01)
        model.gate.set()
        return await first, [await f for f in later], await pair, runner.calls

    first, later, pair, calls = run(scenario())
    assert first == ["4:a"]
    assert later == [["4:b"], ["4:c"], ["4:d"]]
    assert pair == ["4:e", "4:f"]
    assert calls == 2
    assert model.calls == [(["a"], 4), (["b", "c", "d", "e", "f"], 4)]
    assert [len(v) for v in observed] == [1, 5]


def test_max_items_caps_a_call_and_keys_never_mix():
    model = GatedModel()

    async def scenario():
        runner = CoalescingRunner(model, max_items=2, executor=ThreadPoolExecutor(1))
        first = asyncio.ensure_future(runner.submit([(1, "x")]))
        await started(model)
        rest = asyncio.ensure_future(runner.submit([(4, "a"), (2, "p"), (4, "b"), (4, "c"), (2, "q")]))
        await asyncio.sleep(0.01)
        model.gate.set()
        return await first, await rest

    first, rest = run(scenario())
    assert first == ["1:x"]
    # results come back in submission order whatever the grouping
    assert rest == ["4:a", "2:p", "4:b", "4:c", "2:q"]
    # oldest key first, at most 2 per call, one key per call
    assert model.calls[1:] == [(["a", "b"], 4), (["p", "q"], 2), (["c"], 4)]


def test_a_failing_call_fails_only_its_own_items():
    model = GatedModel()

    async def scenario():
        runner = CoalescingRunner(model, max_items=8, executor=ThreadPoolExecutor(1))
        first = asyncio.ensure_future(runner.submit([(4, "a")]))
        await started(model)
        bad = asyncio.ensure_future(runner.submit([(4, "boom")]))
        other_key = asyncio.ensure_future(runner.submit([(2, "ok")]))
        await asyncio.sleep(0.01)
        model.gate.set()
        results = await asyncio.gather(first, bad, other_key, return_exceptions=True)
        after = await runner.submit([(4, "fine")])  # the runner keeps working
        return results, after

    (first, bad, other), after = run(scenario())
    assert first == ["4:a"]
    assert isinstance(bad, ValueError) and "bad tile" in str(bad)
    assert other == ["2:ok"]
    assert after == ["4:fine"]


def test_idle_runner_runs_a_lone_item_at_once():
    model = GatedModel()
    model.gate.set()

    async def scenario():
        runner = CoalescingRunner(model, max_items=16, executor=ThreadPoolExecutor(1))
        return [await runner.submit([(4, v)]) for v in "xyz"], runner.calls

    results, calls = run(scenario())
    assert results == [["4:x"], ["4:y"], ["4:z"]]
    assert calls == 3  # nothing waited: no merging, no added latency


def test_cancelled_waiters_are_skipped():
    model = GatedModel()

    async def scenario():
        runner = CoalescingRunner(model, max_items=8, executor=ThreadPoolExecutor(1))
        first = asyncio.ensure_future(runner.submit([(4, "a")]))
        await started(model)
        gone = asyncio.ensure_future(runner.submit([(4, "gone")]))
        kept = asyncio.ensure_future(runner.submit([(4, "kept")]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        return await first, await kept

    first, kept = run(scenario())
    assert kept == ["4:kept"]
    assert model.calls[1] == (["kept"], 4)


def test_wrong_result_count_is_an_error_for_that_call():
    async def scenario():
        runner = CoalescingRunner(lambda values, key: values[:-1], max_items=4, executor=ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await runner.submit([(1, "a"), (1, "b")])

    run(scenario())


def test_max_items_must_be_positive():
    with pytest.raises(ValueError, match="max_items"):
        CoalescingRunner(lambda v, k: v, max_items=0, executor=ThreadPoolExecutor(1))
