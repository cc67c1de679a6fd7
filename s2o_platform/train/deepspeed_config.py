"""The DeepSpeed config generated from ours. Pure: no DeepSpeed import."""

from __future__ import annotations

from typing import Any

from s2o_platform.config import TrainingStageConfig


def resolve_precision(requested: str, on_gpu: bool, bf16_supported: bool) -> str:
    """fp32 on CPU whatever is asked for 'auto'; bf16 where the GPU has it, else fp16."""
    if requested == "auto":
        if not on_gpu:
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if requested in ("bf16", "fp16") and not on_gpu:
        raise ValueError(f"deepspeed.precision={requested} needs a GPU; use fp32 or auto on CPU")
    return requested


def deepspeed_config(cfg: TrainingStageConfig, precision: str, lr: float | None = None) -> dict[str, Any]:
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
