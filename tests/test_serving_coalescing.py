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


async def while_busy(runner: CoalescingRunner, model: GatedModel, first, later, before_release=None):
    """Submit `first`; once the model thread is busy with it, submit each of `later` separately, run
    `before_release(tasks)`, then let the model go. Returns (first's result, later's results or exceptions)."""
    head = asyncio.ensure_future(runner.submit(first))
    while not model.started.is_set():
        await asyncio.sleep(0.001)
    tasks = [asyncio.ensure_future(runner.submit(items)) for items in later]
    await asyncio.sleep(0.01)
    if before_release is not None:
        before_release(tasks)
        await asyncio.sleep(0.01)
    model.gate.set()
    return await head, await asyncio.gather(*tasks, return_exceptions=True)


def run(coro):
    return asyncio.run(coro)


def runner_for(model, max_items=8, **kwargs) -> CoalescingRunner:
    return CoalescingRunner(model, max_items=max_items, executor=ThreadPoolExecutor(1), **kwargs)


def test_batches_waiting_while_busy_are_merged_into_one_call():
    model, observed = GatedModel(), []
    runner = runner_for(model, on_run=observed.append)
    first, later = run(while_busy(runner, model, [(4, "a")], [[(4, "b")], [(4, "c")], [(4, "d")], [(4, "e"), (4, "f")]]))
    assert first == ["4:a"]
    assert later == [["4:b"], ["4:c"], ["4:d"], ["4:e", "4:f"]]
    assert runner.calls == 2
    assert model.calls == [(["a"], 4), (["b", "c", "d", "e", "f"], 4)]
    assert [len(v) for v in observed] == [1, 5]


def test_max_items_caps_a_call_and_keys_never_mix():
    model = GatedModel()
    first, (rest,) = run(while_busy(runner_for(model, max_items=2), model, [(1, "x")],
                                    [[(4, "a"), (2, "p"), (4, "b"), (4, "c"), (2, "q")]]))
    assert first == ["1:x"]
    # results come back in submission order whatever the grouping
    assert rest == ["4:a", "2:p", "4:b", "4:c", "2:q"]
    # oldest key first, at most 2 per call, one key per call
    assert model.calls[1:] == [(["a", "b"], 4), (["p", "q"], 2), (["c"], 4)]


def test_a_failing_call_fails_only_its_own_items():
    model = GatedModel()
    runner = runner_for(model)
    first, (bad, other) = run(while_busy(runner, model, [(4, "a")], [[(4, "boom")], [(2, "ok")]]))
    assert first == ["4:a"]
    assert isinstance(bad, ValueError) and "bad tile" in str(bad)
    assert other == ["2:ok"]
    assert run(runner.submit([(4, "fine")])) == ["4:fine"]  # the runner keeps working


def test_cancelled_waiters_are_skipped():
    model = GatedModel()
    _, (gone, kept) = run(while_busy(runner_for(model), model, [(4, "a")], [[(4, "gone")], [(4, "kept")]],
                                     before_release=lambda tasks: tasks[0].cancel()))
    assert isinstance(gone, asyncio.CancelledError)
    assert kept == ["4:kept"]
    assert model.calls[1] == (["kept"], 4)


def test_idle_runner_runs_a_lone_item_at_once():
    model = GatedModel()
    model.gate.set()

    async def scenario():
        runner = runner_for(model, max_items=16)
        return [await runner.submit([(4, v)]) for v in "xyz"], runner.calls

    results, calls = run(scenario())
    assert results == [["4:x"], ["4:y"], ["4:z"]]
    assert calls == 3  # nothing waited: no merging, no added latency


def test_wrong_result_count_is_an_error_for_that_call():
    async def scenario():
        runner = runner_for(lambda values, key: values[:-1], max_items=4)
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await runner.submit([(1, "a"), (1, "b")])

    run(scenario())


def test_max_items_must_be_positive():
    with pytest.raises(ValueError, match="max_items"):
        CoalescingRunner(lambda v, k: v, max_items=0, executor=ThreadPoolExecutor(1))
