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
    first, later = run(
        while_busy(runner, model, [(4, "a")], [[(4, "b")], [(4, "c")], [(4, "d")], [(4, "e"), (4, "f")]])
    )
    assert first == ["4:a"]
    assert later == [["4:b"], ["4:c"], ["4:d"], ["4:e", "4:f"]]
    assert runner.calls == 2
    assert model.calls == [(["a"], 4), (["b", "c", "d", "e", "f"], 4)]
    assert [len(v) for v in observed] == [1, 5]


def test_max_items_caps_a_call_and_keys_never_mix():
    model = GatedModel()
    first, (rest,) = run(
        while_busy(
            runner_for(model, max_items=2),
            model,
            [(1, "x")],
            [[(4, "a"), (2, "p"), (4, "b"), (4, "c"), (2, "q")]],
        )
    )
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
    _, (gone, kept) = run(
        while_busy(
            runner_for(model),
            model,
            [(4, "a")],
            [[(4, "gone")], [(4, "kept")]],
            before_release=lambda tasks: tasks[0].cancel(),
        )
    )
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


def test_max_weight_caps_a_call_and_a_heavy_item_runs_alone():
    model = GatedModel()
    runner = runner_for(model, max_items=8, max_weight=5)

    async def scenario():
        head = asyncio.ensure_future(runner.submit([(4, "x")]))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        rest = asyncio.ensure_future(
            runner.submit([(4, "a"), (4, "b"), (4, "c"), (4, "huge")], weights=[2, 2, 2, 9])
        )
        await asyncio.sleep(0.01)
        model.gate.set()
        return await head, await rest

    first, rest = run(scenario())
    assert rest == ["4:a", "4:b", "4:c", "4:huge"]
    # 2 + 2 fit in 5; c starts the next call; the item heavier than the budget runs alone
    assert model.calls[1:] == [(["a", "b"], 4), (["c"], 4), (["huge"], 4)]


def test_a_small_request_goes_before_a_large_requests_later_turns():
    model = GatedModel()
    runner = runner_for(model, max_items=8, max_weight=2)
    large = [(4, f"L{i}") for i in range(6)]

    async def scenario():
        head = asyncio.ensure_future(runner.submit([(4, "x")]))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        big = asyncio.ensure_future(runner.submit(large, turns=[0, 0, 1, 1, 2, 2]))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(runner.submit([(4, "s")]))  # arrives after the whole large request
        await asyncio.sleep(0.01)
        model.gate.set()
        return await head, await big, await small

    _, big, small = run(scenario())
    assert small == ["4:s"] and big == [f"4:L{i}" for i in range(6)]
    # the small request's turn 0 comes before the large request's turns 1 and 2
    assert model.calls[1:] == [(["L0", "L1"], 4), (["s", "L2"], 4), (["L3", "L4"], 4), (["L5"], 4)]


def test_work_of_a_caller_that_went_away_is_dropped_and_counted():
    model = GatedModel()
    runner = runner_for(model, max_items=8, max_weight=2)

    async def scenario():
        head = asyncio.ensure_future(runner.submit([(4, "x")]))
        while not model.started.is_set():
            await asyncio.sleep(0.001)
        big = asyncio.ensure_future(
            runner.submit([(4, "a"), (4, "b"), (4, "c")], weights=[2, 2, 2], turns=[0, 1, 2])
        )
        await asyncio.sleep(0.01)
        assert runner.pending_weight() == {4: 6}
        big.cancel()  # the client disconnected
        await asyncio.sleep(0.01)
        assert runner.pending_weight() == {}
        model.gate.set()
        await head
        return await asyncio.gather(big, return_exceptions=True)

    (gone,) = run(scenario())
    assert isinstance(gone, asyncio.CancelledError)
    assert model.calls == [(["x"], 4)] and runner.dropped_weight == 6
