"""The layout of a training checkpoint folder: written by the workers (train/harness.py), read by the
driver (train/launcher.py)."""

from __future__ import annotations

TRAINER_STATE_FILE = "trainer_state.json"  # step, epoch, samples, metrics, history (rank 0)
EMA_FILE = "ema.safetensors"  # the fp32 EMA weights (rank 0)
DEEPSPEED_DIR = "deepspeed"  # deepspeed/<module>/: each rank's DeepSpeed shard
BUNDLE_DIR = "bundle"  # the exported inference bundle (rank 0)
DEEPSPEED_TAG = "state"
GENERATOR_FILE = "generator_rank{rank}.json"  # the noise/timestep generator of each rank
