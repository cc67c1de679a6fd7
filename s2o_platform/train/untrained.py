"""Bundles of freshly initialised networks, written by the stages' own exporters.

Speed does not depend on the weights, so latency benchmarks of a preset's architectures and
end-to-end tests of everything downstream of training (evaluation, batch, serving) use these instead
of waiting for a training run. Their model card says they are untrained.

Its home is training, beside the exporters it drives: only tests and benchmarks import it, never evaluation,
translation or serving (which read bundles, and never import s2o_platform.train).
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from s2o_platform.data.store import StoreMetadata
from s2o_platform.models.pix2pix import UNetGenerator
from s2o_platform.models.unet import build_unet

CARD = {"note": "untrained: freshly initialised weights (for speed measurements and tests only)"}


def write_untrained_bundles(
    config_dir: str | Path, directory: str | Path, store: StoreMetadata, seed: int = 0
) -> dict[str, str]:
    """Write teacher/, student/ and gan/ bundles for `store`'s tiles from config_dir/{teacher,distill,gan}.yaml."""
    from s2o_platform.train.stages.distill import DistillStage
    from s2o_platform.train.stages.gan import GanStage
    from s2o_platform.train.stages.teacher import TeacherStage, noise_scheduler

    config_dir, directory = Path(config_dir), Path(directory)
    size = [f"model.sample_size={store.tile_size}"]
    teacher_cfg = load_config(TeacherConfig, config_dir / "teacher.yaml", size)
    distill_cfg = load_config(DistillConfig, config_dir / "distill.yaml", [])
    gan_cfg = load_config(GanConfig, config_dir / "gan.yaml", [f"generator.sample_size={store.tile_size}"])
    torch.manual_seed(seed)
    unet = build_unet(teacher_cfg.model, store.sar_channels)
    TeacherStage().export(str(directory / "teacher"), unet, teacher_cfg, store, CARD)
    teacher = DistillStage.teacher_context(dict(noise_scheduler(teacher_cfg.diffusion).config))
    DistillStage().export(str(directory / "student"), unet, distill_cfg, store, CARD, teacher)
    g = gan_cfg.generator
    generator = UNetGenerator(
        sample_size=g.sample_size,
        in_channels=store.sar_channels,
        base_channels=g.base_channels,
        dropout=g.dropout,
    )
    GanStage().export(str(directory / "gan"), generator, gan_cfg, store, CARD)
    return {k: str(directory / k) for k in ("teacher", "student", "gan")}
