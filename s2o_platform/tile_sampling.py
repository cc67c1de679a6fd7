"""Running a bundle's sampler over SAR tiles: sampler and step resolution against the bundle, per-tile seeds, and
`translate_tiles`, the one call evaluation, archive translation, serving and the Python API share. Below both
`pipeline` (S2OPipeline) and `inference` (LoadedModel, built on it), so neither imports the other back."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from s2o_platform.bundle import Bundle, BundleError, BundleMetadata
from s2o_platform.diffusion.sampling import TEACHER_SAMPLERS, sample_student, sample_teacher


def resolve_sampler(bundle: Bundle, sampler: str | None, steps: int | None) -> tuple[str, int]:
    """The sampler and step count to use: as asked, else the bundle's defaults; checked against the bundle."""
    return resolve_sampler_for(bundle.metadata, bundle.path, sampler, steps)


def resolve_sampler_for(
    metadata: BundleMetadata, where: str, sampler: str | None, steps: int | None
) -> tuple[str, int]:
    """`resolve_sampler` from a bundle's metadata alone (checks before any network is loaded)."""
    spec = metadata.sampler
    name = sampler or spec.name
    if name not in spec.allowed:
        raise BundleError(f"{where} ({metadata.stage}) cannot sample with {name!r}; allowed: {spec.allowed}")
    n = int(steps if steps is not None else spec.default_steps)
    if n < 1:
        raise BundleError(f"the step count must be at least 1; {n} was asked for")
    if name == "direct":
        return name, 1  # one forward pass, whatever was asked
    if spec.max_steps is not None and n > spec.max_steps:
        raise BundleError(
            f"{where} ({metadata.stage}) samples with 1..{spec.max_steps} steps; {n} was asked for"
        )
    return name, n


@torch.no_grad()
def translate_tiles(
    bundle: Bundle,
    sar: np.ndarray | torch.Tensor,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    keys: Sequence[str] | None = None,
) -> np.ndarray:
    """SAR tiles (N, C, H, W) in [-1, 1] -> optical (N, 3, H, W) float32 in [-1, 1].

    Seeded: the same inputs, seed and batch size give the same outputs. With `keys` (one per tile), each
    tile draws its noise from its own generator seeded by `batch_seed(seed, key)`, so a tile's noise
    does not depend on which other tiles share its batch (archive translation keys tiles by scene and
    window: a resumed run draws what an uninterrupted one drew).
    """
    name, n_steps = resolve_sampler(bundle, sampler, steps)
    first = next(bundle.model.parameters())
    device, dtype = first.device, first.dtype
    sar_t = torch.as_tensor(np.asarray(sar, dtype=np.float32))
    if (
        sar_t.ndim != 4
        or sar_t.shape[-1] != bundle.metadata.tile_size
        or sar_t.shape[1] != bundle.metadata.sar_channels
    ):
        raise BundleError(
            f"tiles of shape {tuple(sar_t.shape)} do not fit {bundle.path}: expected (N, {bundle.metadata.sar_channels}, "
            f"{bundle.metadata.tile_size}, {bundle.metadata.tile_size})"
        )
    if keys is not None and len(keys) != len(sar_t):
        raise ValueError(f"{len(keys)} keys for {len(sar_t)} tiles")
    shared = torch.Generator(device=device).manual_seed(seed)
    outputs = []
    for start in range(0, len(sar_t), batch_size):
        chunk = sar_t[start : start + batch_size].to(device=device, dtype=dtype)
        generator: torch.Generator | list[torch.Generator] = (
            shared
            if keys is None
            else [
                torch.Generator(device=device).manual_seed(batch_seed(seed, key))
                for key in keys[start : start + batch_size]
            ]
        )
        if name in TEACHER_SAMPLERS:
            out = sample_teacher(bundle.model, chunk, bundle.scheduler_config, name, n_steps, generator)
        elif name == "lcm":
            out = sample_student(
                bundle.model,
                chunk,
                bundle.scheduler_config,
                n_steps,
                generator,
                max_steps=bundle.metadata.sampler.max_steps or n_steps,
            )
        elif name == "direct":
            out = bundle.model(chunk).clamp(-1, 1)
        else:
            raise BundleError(f"unknown sampler {name!r} in {bundle.path}")
        outputs.append(out.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 3, *sar_t.shape[-2:]), np.float32)


#: What a translation with uncertainty outputs per pixel: the mean of the samples, or the first sample (which is
#: what a plain translation with the same seed and keys gives).
UNCERTAINTY_OUTPUTS = ("mean", "sample")


def translate_tiles_with_uncertainty(
    bundle: Bundle,
    sar: np.ndarray | torch.Tensor,
    samples: int,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    keys: Sequence[str] | None = None,
    output: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """`samples` translations of each SAR tile with independent noise -> (optical (N, 3, H, W) in [-1, 1], their
    per-pixel uncertainty (N, H, W) float32): the standard deviation over the samples (ddof 1), averaged over
    RGB, in the model's units (half the [-1, 1] range is 1.0; times 127.5 in 8-bit output levels).

    Sample j of the tile keyed K draws its noise from `batch_seed(seed, K)` for j = 0 (so `output="sample"` is
    what `translate_tiles` gives with the same seed and keys) and `batch_seed(seed, f"{K}#{j}")` after: a re-run
    reproduces it, whatever the batch. Without `keys` a tile is keyed by its index. A tile's samples share its
    forward passes (the batch is `batch_size` rounded down to a multiple of `samples`, at least `samples`).
    A direct (pix2pix) bundle has no noise to draw, hence no uncertainty: refused.
    """
    name, _ = resolve_sampler(bundle, sampler, steps)
    if name == "direct":
        raise BundleError(
            f"{bundle.path} ({bundle.metadata.stage}) is deterministic: one forward pass per tile, no noise to "
            "sample, so it has no uncertainty to estimate; use a student or teacher bundle"
        )
    if samples < 2:
        raise ValueError(f"an uncertainty needs at least 2 samples per tile, {samples} asked for")
    if output not in UNCERTAINTY_OUTPUTS:
        raise ValueError(f"output must be one of {UNCERTAINTY_OUTPUTS}, got {output!r}")
    sar_np = np.asarray(sar, dtype=np.float32)
    tile_keys = list(keys) if keys is not None else [f"tile{i}" for i in range(len(sar_np))]
    if len(tile_keys) != len(sar_np):
        raise ValueError(f"{len(tile_keys)} keys for {len(sar_np)} tiles")
    repeated = np.repeat(sar_np, samples, axis=0)  # tile-major: a tile's samples sit side by side
    sample_keys = [key if j == 0 else f"{key}#{j}" for key in tile_keys for j in range(samples)]
    drawn = translate_tiles(
        bundle,
        repeated,
        sampler,
        steps,
        seed,
        batch_size=max(samples, batch_size // samples * samples),
        keys=sample_keys,
    )
    drawn = drawn.reshape(len(sar_np), samples, *drawn.shape[1:])
    optical = drawn.mean(axis=1) if output == "mean" else drawn[:, 0]
    uncertainty = drawn.std(axis=1, ddof=1).mean(axis=1)
    return optical.astype(np.float32), uncertainty.astype(np.float32)


def batch_seed(seed: int, key: str) -> int:
    """The seed of one batch: the run's seed plus a hash of the batch's first item, so an item's noise
    does not depend on which actor or replica translates it."""
    return (seed + zlib.crc32(key.encode())) % (2**31)


def tile_key(name: str, row: int, col: int) -> str:
    """The key of one window of an image or scene (its name and the window's offsets): with the run's seed it
    gives the tile's noise (`batch_seed`), wherever and with whatever neighbours the tile is translated.
    `s2o translate` keys a scene's windows by the scene's name; `S2OPipeline` by `name=` (default: the file's)."""
    return f"{name}:{row}:{col}"
