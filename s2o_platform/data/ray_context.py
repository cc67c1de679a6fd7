"""Ray Data settings for the work that needs them, and only for it.

`ray.data.DataContext.get_current()` is one object per process: a setting made on it stays for every later
dataset of the process (a test run, a notebook, the next command of a library caller). `scoped_data_context`
applies settings for the duration of a block and puts the previous context back after it, even on error.

Where Ray Data (2.60) reads its settings, and so why the scope covers the work:
- A dataset captures a deep copy of the current context when its source is created (`read_datasource`,
  `read_parquet`, `from_items`, ... call `DataContext.get_current().copy()`); every transformation of it
  (`map_batches`, `sort`, `random_shuffle`, ...) shares that copy (`Dataset._from_parent`), `materialize()`
  copies it again, and its execution (`StreamingExecutor(dataset._context)`: execution options such as
  preserve_order, its progress bars) and its tasks and actors use that copy, not the current context.
  So the settings must be current when the source dataset is created, which the block does.
- A few driver-side helpers still read `DataContext.get_current()` while a dataset is planned or executes
  (the sampling progress bars of `sort` and of Parquet reads, operator name truncation in the progress bars,
  iter_batches' actor prefetcher). So the block should also hold the execution, where the caller runs it.
- A dataset that leaves the block (one handed to Ray Train) keeps its captured copy, and the places that run
  it elsewhere make that copy current there (the streaming-split coordinator, map tasks and actors).

The current context is a process global, not per thread: two threads that run scoped blocks at once share it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def scoped_data_context(*, preserve_order: bool | None = None, **settings: Any) -> Iterator[Any]:
    """Within the block, the current `ray.data.DataContext` is a copy of the previous one with `settings`
    (DataContext attributes, e.g. enable_progress_bars=False) and `preserve_order` (of its execution_options)
    applied; after it, the previous context is current again, as it was (changes made to the copy in the block
    are dropped with it). Yields the copy. An unknown setting is refused before anything changes."""
    from ray.data import DataContext

    previous = DataContext.get_current()
    scoped = previous.copy()
    for name, value in settings.items():
        if not hasattr(scoped, name):
            raise AttributeError(f"ray.data.DataContext has no setting {name!r}")
        setattr(scoped, name, value)
    if preserve_order is not None:
        scoped.execution_options.preserve_order = preserve_order
    with DataContext.current(scoped):  # sets it current; restores `previous` in a finally
        yield scoped
