"""`LoadedModel`: a bundle loaded once for the Ray Data actors and Serve replicas, on `S2OPipeline`.

The sampling functions live in `tile_sampling` (below `pipeline`, which needs them too) and are re-exported here,
where callers have always imported them from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from s2o_platform.pipeline import S2OPipeline
from s2o_platform.tile_sampling import (
    batch_seed,
    resolve_sampler,
    resolve_sampler_for,
    tile_key,
    translate_tiles,
)

__all__ = [
    "LoadedModel",
    "batch_seed",
    "resolve_sampler",
    "resolve_sampler_for",
    "tile_key",
    "translate_tiles",
]


class LoadedModel(S2OPipeline):
    """A bundle loaded once onto a device and dtype, translating batch after batch: the base of the
    Ray Data actors (archive translation, evaluation) and of the Serve replicas.

    A thin subclass of `S2OPipeline` (the Python API), which owns bundle loading, device, dtype, threads and
    `--compile`: this adds the tile-batch call the actors and replicas make (`translate`)."""

    def __init__(
        self,
        bundle: str,
        device: str = "auto",
        dtype: str = "auto",
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 32,
        cpu_share: int = 1,
        storage_options=None,
        threads: int | None = None,
        compile: str = "off",
        warm_up: bool = True,
    ):
        """`compile`: off | auto | default | max (`inference_compile`). With it on and `warm_up`, every batch size
        this model can run at (1, 2, 4, ... up to `batch_size`) is compiled here, before the first call (what a
        server needs: a request never waits for a compile); without `warm_up`, each on its first use.
        On a CPU, torch's threads are set to `threads`, else the node's cores shared among `cpu_share` actors
        (Ray starts actors with one torch thread)."""
        super().__init__(
            bundle,
            device=device,
            dtype=dtype,
            sampler=sampler,
            steps=steps,
            seed=seed,
            batch_size=batch_size,
            cpu_share=cpu_share,
            storage_options=storage_options,
            threads=threads,
            compile=compile,
            warm_up=warm_up,
        )

    def translate(
        self, sar: np.ndarray, key: str, steps: int | None = None, keys: Sequence[str] | None = None
    ) -> np.ndarray:
        """Translate tiles seeded by `key` (see `batch_seed`), or tile by tile by `keys`, with this model's sampler
        and steps unless given."""
        return self.run_tiles(
            sar, seed=self.seed if keys is not None else batch_seed(self.seed, key), keys=keys, steps=steps
        )
