"""Translating SAR tiles with any bundle: the one entry point evaluation, batch and serving share."""

from __future__ import annotations

import numpy as np
import torch

from s2o_platform.bundle import Bundle, BundleError, BundleMetadata
from s2o_platform.diffusion.sampling import STUDENT_STEPS, TEACHER_SAMPLERS, sample_student, sample_teacher


def resolve_sampler(bundle: Bundle, sampler: str | None, steps: int | None) -> tuple[str, int]:
    """The sampler and step count to use: as asked, else the bundle's defaults; checked against the bundle."""
    return resolve_sampler_for(bundle.metadata, bundle.path, sampler, steps)


def resolve_sampler_for(metadata: BundleMetadata, where: str, sampler: str | None, steps: int | None) -> tuple[str, int]:
    """`resolve_sampler` from a bundle's metadata alone (checks before any network is loaded)."""
    spec = metadata.sampler
    name = sampler or spec.name
    if name not in spec.allowed:
        raise BundleError(f"{where} ({metadata.stage}) cannot sample with {name!r}; allowed: {spec.allowed}")
    n = int(steps if steps is not None else spec.default_steps)
    if name == "lcm" and n not in STUDENT_STEPS:
        raise BundleError(f"a student samples with 1..8 steps; {n} was asked for")
    if name == "direct":
        n = 1
    return name, n


@torch.no_grad()
def translate_tiles(
    bundle: Bundle,
    sar: np.ndarray | torch.Tensor,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """SAR tiles (N, C, H, W) in [-1, 1] -> optical (N, 3, H, W) float32 in [-1, 1].

    Seeded: the same inputs, seed and batch size give the same outputs.
    """
    name, n_steps = resolve_sampler(bundle, sampler, steps)
    first = next(bundle.model.parameters())
    device, dtype = first.device, first.dtype
    sar_t = torch.as_tensor(np.asarray(sar, dtype=np.float32))
    if sar_t.ndim != 4 or sar_t.shape[-1] != bundle.metadata.tile_size or sar_t.shape[1] != bundle.metadata.sar_channels:
        raise BundleError(
            f"tiles of shape {tuple(sar_t.shape)} do not fit {bundle.path}: expected (N, {bundle.metadata.sar_channels}, "
            f"{bundle.metadata.tile_size}, {bundle.metadata.tile_size})"
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = []
    for start in range(0, len(sar_t), batch_size):
        chunk = sar_t[start : start + batch_size].to(device=device, dtype=dtype)
        if name in TEACHER_SAMPLERS:
            out = sample_teacher(bundle.model, chunk, bundle.scheduler_config, name, n_steps, generator)
        elif name == "lcm":
            out = sample_student(bundle.model, chunk, bundle.scheduler_config, n_steps, generator)
        elif name == "direct":
            out = bundle.model(chunk).clamp(-1, 1)
        else:
            raise BundleError(f"unknown sampler {name!r} in {bundle.path}")
        outputs.append(out.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 3, *sar_t.shape[-2:]), np.float32)
