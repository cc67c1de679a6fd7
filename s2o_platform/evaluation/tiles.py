"""The evaluated split's tiles, read on the driver in tile-id order (the same set on every run)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from s2o_platform import storage
from s2o_platform.data.store import TILE_SCHEMA, decode_batch, shard_paths
from s2o_platform.evaluation.spec import EvalError


def load_test_tiles(
    data: str, split: str, limit: int | None, options: storage.StorageOptions
) -> dict[str, np.ndarray]:
    """The split's tiles sorted by tile id (the same set on every run), the first `limit` of them."""
    paths = shard_paths(data, [split], options)
    if not paths:
        raise EvalError(f"the store {data} has no tiles in its {split!r} split; choose another --split")
    return _read_sorted(data, paths, limit, options)


def _read_sorted(
    data: str, paths: list[str], limit: int | None, options: storage.StorageOptions
) -> dict[str, np.ndarray]:
    fs, _ = storage.resolve(data, options)
    # the store's schema: shards written before an optional column (landcover) existed read it as null
    table = pq.ParquetDataset(paths, filesystem=fs, schema=TILE_SCHEMA).read().sort_by("tile_id")
    if limit is not None:
        table = table.slice(0, limit)
    return decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
