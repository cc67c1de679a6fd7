"""One stage's training state in one process, and the step that ties it together.

    runtime = build_runtime(stage, cfg, store, extra, device, rank=0)
    metrics, stepped = runtime.step(batch)

The harness (train/harness.py) runs this inside every Ray Train worker; unit tests and
benchmarks/gpu_check.py drive it directly in one process, so the step they check is the step
that trains. What it owns:
  - the precision: DeepSpeed's (fp32, bf16 or fp16, checked against the device), or bf16 autocast
    over fp32 weights (`train.autocast`);
  - one DeepSpeed engine per trainable module (AdamW, warm-up/decay LR, ZeRO, precision);
  - the EMA, kept in fp32 and updated after every optimizer step from DeepSpeed's fp32 *master*
    weights, not from the rounded bf16/fp16 copies the forward pass uses;
  - the noise/timestep generator, whose state travels with checkpoints.
"""

from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from s2o_platform.data.store import StoreMetadata
from s2o_platform.train.deepspeed_config import compute_dtype, deepspeed_config, resolve_precision
from s2o_platform.train.ema import ema_decay_at, ema_update
from s2o_platform.train.schedule import lr_scheduler
from s2o_platform.train.stages.base import StageModels


def get_stage(name: str):
    from s2o_platform.train.stages.distill import DistillStage
    from s2o_platform.train.stages.gan import GanStage
    from s2o_platform.train.stages.teacher import TeacherStage

    stages = {"teacher": TeacherStage, "distill": DistillStage, "gan": GanStage}
    if name not in stages:
        raise ValueError(f"unknown training stage {name!r}; known: {sorted(stages)}")
    return stages[name]()


def device_precision(requested: str, device: torch.device) -> str:
    """`resolve_precision` with what DeepSpeed's accelerator on this device supports."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return resolve_precision(
        requested, device.type, bool(accelerator.is_bf16_supported()), bool(accelerator.is_fp16_supported())
    )


def ensure_process_group() -> None:
    """A one-process gloo group on loopback when none exists (DeepSpeed needs one; Ray Train makes its own)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def master_parameters(engine: Any) -> list[torch.Tensor]:
    """The fp32 master copy of each of the engine's module parameters, in `module.parameters()` order.

    fp32 training: the parameters themselves. bf16/fp16: DeepSpeed's optimizer keeps the masters;
    ZeRO 1/2 links each parameter to its fp32 fragment (gathered across ranks: every rank must call
    this), the stage-0 optimizers keep one fp32 copy per parameter or one flat fp32 buffer per group.
    """
    params = list(engine.module.parameters())
    if all(p.dtype == torch.float32 for p in params):
        return params
    if any(hasattr(p, "_hp_mapping") for p in params):
        from deepspeed.utils import safe_get_full_fp32_param

        full = [safe_get_full_fp32_param(p) for p in params]
        return [p if m is None else m.view_as(p) for p, m in zip(params, full)]
    optimizer = engine.optimizer
    low, masters = getattr(optimizer, "fp16_groups", None), None
    if low is not None and hasattr(optimizer, "fp32_groups"):  # FP16_UnfusedOptimizer (fp16 or bf16, ZeRO 0)
        masters = optimizer.fp32_groups
    elif low is not None and hasattr(optimizer, "fp32_groups_flat"):  # FP16_Optimizer (fused)
        from torch._utils import _unflatten_dense_tensors

        masters = [
            _unflatten_dense_tensors(flat, group) for flat, group in zip(optimizer.fp32_groups_flat, low)
        ]
    if masters is None:
        raise RuntimeError(
            f"no fp32 master weights found in DeepSpeed's {type(optimizer).__name__}: cannot keep an fp32 EMA"
        )
    by_param = {id(p): m for group, group_masters in zip(low, masters) for p, m in zip(group, group_masters)}
    return [by_param.get(id(p), p) for p in params]  # frozen parameters are not in the optimizer


@dataclass
class StageRuntime:
    stage: Any
    cfg: Any
    models: StageModels
    engines: dict[str, Any]
    ema: torch.nn.Module
    precision: str
    autocast_on: bool
    generator: torch.Generator
    device: torch.device

    @property
    def main(self) -> Any:
        """The engine whose module is EMA-averaged and exported (the stage's first trainable)."""
        return next(iter(self.engines.values()))

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
        """One micro-batch through the stage; after an optimizer step (not inside gradient accumulation)
        the EMA moves towards the master weights. Returns (metrics, whether an optimizer step happened)."""
        before = self.main.global_steps
        # backward and optimizer steps run inside too (they are in the stage's step): backward ops take the
        # dtypes autocast chose for their forward ops; weights and optimizer state stay fp32.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_on):
            metrics = self.stage.step(self.engines, self.models, self.ema, batch, self.generator)
        stepped = self.main.global_steps != before
        if stepped:
            decay = ema_decay_at(self.main.global_steps, self.cfg.train.ema_decay, self.cfg.train.ema_warmup)
            ema_update(self.ema, self.main.module, decay, parameters=master_parameters(self.main))
        return metrics, stepped


def build_runtime(
    stage_name: str,
    cfg: Any,
    store: StoreMetadata,
    extra: dict[str, Any],
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> StageRuntime:
    """Models, engines, EMA and generator for one stage on `device` (a process group must exist:
    Ray Train's, or `ensure_process_group()`)."""
    import deepspeed

    stage = get_stage(stage_name)
    precision = device_precision(cfg.deepspeed.precision, device)
    torch.manual_seed(cfg.train.seed + rank)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)
    models = stage.build(cfg, store, extra, device, compute_dtype(precision, cfg.train.autocast))
    engines: dict[str, Any] = {}
    for name, module in models.trainable.items():
        lr = models.lr.get(name, cfg.train.lr)
        optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad],
            lr=lr,
            betas=cfg.train.betas,
            weight_decay=cfg.train.weight_decay,
        )
        scheduler = lr_scheduler(optimizer, cfg.train)
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, precision),
            dist_init_required=False,
        )
        if world == 1 and cfg.deepspeed.zero_stage == 0:
            engine.enable_backward_allreduce = False  # an all-reduce over one rank only copies the gradients
        engines[name] = engine
    main = next(iter(engines.values()))
    # The EMA starts from the masters (fp32), not from the engine's possibly rounded copy.
    ema = copy.deepcopy(main.module).float().requires_grad_(False).eval()
    with torch.no_grad():
        for e, m in zip(ema.parameters(), master_parameters(main)):
            e.copy_(m)
    autocast_on = precision == "fp32" and cfg.train.autocast == "bf16"
    return StageRuntime(stage, cfg, models, engines, ema, precision, autocast_on, generator, device)
