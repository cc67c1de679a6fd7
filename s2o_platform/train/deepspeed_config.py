"""The DeepSpeed config generated from ours, and the precision rule. Pure: no DeepSpeed import."""

from __future__ import annotations

from typing import Any

import torch

from s2o_platform.config import TrainingStageConfig
from s2o_platform.devices import DTYPES


def resolve_precision(requested: str, device_type: str, bf16_supported: bool, fp16_supported: bool) -> str:
    """The precision DeepSpeed trains in on this device.

    auto: bf16 on a GPU that has it, else fp16 on a GPU; fp32 on a CPU (where `train.autocast: bf16`
    is the fast path: the weights, optimizer and EMA stay fp32). bf16 and fp16 are honoured on any
    device whose DeepSpeed accelerator supports them (a CPU with AVX512-BF16 or AMX has bf16; fp16 on a
    CPU needs AVX512-FP16), else refused with the reason.
    """
    if requested == "auto":
        if device_type != "cuda":
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    supported = {"fp32": True, "bf16": bf16_supported, "fp16": fp16_supported}
    if requested not in supported:
        raise ValueError(f"deepspeed.precision must be auto, fp32, bf16 or fp16, got {requested!r}")
    if not supported[requested]:
        need = (
            "a GPU or a CPU with AVX512-FP16 (oneDNN fp16)"
            if requested == "fp16"
            else "a GPU with bf16 or a CPU with AVX512-BF16/AMX"
        )
        other = [p for p in ("bf16", "fp32") if supported[p] and p != requested]
        raise ValueError(
            f"deepspeed.precision={requested} is not supported on this {device_type} (DeepSpeed's accelerator says so): "
            f"it needs {need}; use {' or '.join(other)}"
        )
    return requested


def compute_dtype(precision: str, autocast: str) -> torch.dtype:
    """The dtype forward passes compute in: DeepSpeed's precision, or bf16 where `train.autocast: bf16`
    runs over fp32 weights."""
    if precision == "fp32" and autocast == "bf16":
        return torch.bfloat16
    return DTYPES[precision]


def effective_batch(cfg: TrainingStageConfig) -> int:
    """Samples per optimizer step over the whole run: per-worker micro-batch x accumulation x workers."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.scaling.num_workers


def deepspeed_config(cfg: TrainingStageConfig, precision: str) -> dict[str, Any]:
    """DeepSpeed's JSON config for one engine (optimizer and scheduler are passed in as objects)."""
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # progress is ours
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # torch AdamW passed in: tested here on ZeRO 0-2
    }
