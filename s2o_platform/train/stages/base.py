"""What a training stage gives the shared harness: its models and its step function.

The harness (train/harness.py) owns everything else: DeepSpeed engines and optimizers, LR
schedules, EMA, the data stream, checkpoints, resume, progress and the bundle export call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from s2o_platform.bundle import BundleMetadata
from s2o_platform.config import TrainingStageConfig
from s2o_platform.data.store import StoreMetadata


@dataclass
class StageModels:
    """Trainable modules (one DeepSpeed engine and optimizer each; the first is the one that is
    EMA-averaged and exported) and frozen helpers (e.g. a teacher), already on the device."""

    trainable: dict[str, torch.nn.Module]
    frozen: dict[str, torch.nn.Module] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)  # per-module learning rate; default cfg.train.lr
    #: What `export` needs besides the weights, config, store and card (distillation: the teacher's noise
    #: schedule and prediction type), handed to it explicitly by the harness.
    export_context: dict[str, Any] = field(default_factory=dict)


class TrainingStage(Protocol):
    name: str
    config_model: type[TrainingStageConfig]

    def build(
        self,
        cfg: Any,
        store: StoreMetadata,
        extra: dict[str, Any],
        device: torch.device,
        compute_dtype: torch.dtype = torch.float32,
    ) -> StageModels:
        """Create (or load) the models for this stage, in fp32 (DeepSpeed casts the trainable ones to its
        precision); `compute_dtype` is what the trainable ones' forward passes will compute in."""

    def step(
        self,
        engines: dict[str, Any],
        models: StageModels,
        ema: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
    ) -> dict[str, float]:
        """One micro-batch: forward, `engine.backward(loss)`, `engine.step()` for each engine it trains;
        returns named scalar metrics (losses first)."""

    def export(
        self,
        directory: str,
        ema: torch.nn.Module,
        cfg: Any,
        store: StoreMetadata,
        card: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> None:
        """Write the inference bundle of the EMA weights into `directory`; `context`: the `export_context` of the
        StageModels `build` returned (everything export reads comes in as an argument, none from `self`)."""

    def bundle_metadata(
        self, cfg: Any, store: StoreMetadata, card: dict[str, Any], context: dict[str, Any] | None = None
    ) -> BundleMetadata:
        """The bundle metadata this stage writes."""
