"""The training harness shared by every stage: runs inside each Ray Train worker.

train_loop_per_worker(loop_config)
  [1] parse the stage config
  [2] build_runtime (train/runtime.py): the stage's models, one DeepSpeed engine per trainable
      module, the precision, the fp32 EMA and the noise generator
  [3] resume: DeepSpeed state, EMA, generator and step from ray.train.get_checkpoint()
  [4] stream tiles: ray.train.get_dataset_shard("train").iter_torch_batches (a local shuffle buffer
      seeded per rank and epoch from train.seed, train/data_order.py), paired augmentation (train/collate.py)
  [5] runtime.step(batch) per micro-batch (the EMA follows every optimizer step); progress on rank 0,
      which also logs it to the MLflow run the driver started, when tracking is on (s2o_platform/tracking.py)
  [6] checkpoint: each rank saves its DeepSpeed shard and generator -> barrier -> rank 0 adds EMA,
      state and the exported bundle -> ray.train.report(metrics, checkpoint)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2o_platform.data.store import StoreMetadata
from s2o_platform.devices import cpu_threads  # one rule for training and inference workers
from s2o_platform.tracking import Tracker
from s2o_platform.train.checkpoint_files import (
    BUNDLE_DIR,
    DEEPSPEED_DIR,
    DEEPSPEED_TAG,
    EMA_FILE,
    GENERATOR_FILE,
    TRAINER_STATE_FILE,
)
from s2o_platform.train.collate import PairCollate
from s2o_platform.train.data_order import LOCAL, shuffle_seed
from s2o_platform.train.progress import format_eta, log
from s2o_platform.train.runtime import build_runtime, get_stage


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.torch import load_file, save_file

    # [1]-[2] config; models, engines, precision, EMA (train/runtime.py) -------------------------
    cfg = get_stage(loop_config["stage"]).config_model.model_validate(loop_config["config"])
    store = StoreMetadata.from_dict(loop_config["store_metadata"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    node_id = ray.get_runtime_context().get_node_id()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.scaling.torch_threads, context.get_local_world_size()))
    extra = {**loop_config.get("extra", {}), "storage_options": loop_config.get("storage_options")}
    runtime = build_runtime(loop_config["stage"], cfg, store, extra, device, rank, world)
    stage, engines, ema, main, precision = (
        runtime.stage,
        runtime.engines,
        runtime.ema,
        runtime.main,
        runtime.precision,
    )
    # MLflow: rank 0 alone logs progress, into the run the driver started (None: tracking off; mlflow not imported)
    tracker = Tracker.attach(loop_config.get("tracking") if rank == 0 else None)
    if rank == 0 and cfg.train.autocast != "off" and not runtime.autocast_on:
        log(
            f"[{stage.name}] train.autocast={cfg.train.autocast} not applied: DeepSpeed already trains in {precision}"
        )

    # [3] resume ---------------------------------------------------------------------------------
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            for name, engine in engines.items():
                path, _ = engine.load_checkpoint(
                    os.path.join(ckpt_dir, DEEPSPEED_DIR, name), tag=DEEPSPEED_TAG
                )
                if path is None:
                    raise RuntimeError(f"checkpoint {ckpt_dir} has no DeepSpeed state for {name!r}")
            ema.load_state_dict(load_file(os.path.join(ckpt_dir, EMA_FILE), device=str(device)))
            state = json.loads(Path(ckpt_dir, TRAINER_STATE_FILE).read_text())
            generator_file = Path(ckpt_dir, GENERATOR_FILE.format(rank=rank))
            if (
                generator_file.exists()
            ):  # so a resumed run draws the noise and timesteps an uninterrupted one would
                saved = json.loads(generator_file.read_text())["torch_generator"]
                runtime.generator.set_state(torch.tensor(saved, dtype=torch.uint8))
            elif rank == 0:
                log(
                    f"[{stage.name}] the checkpoint has no generator state (older run): noise draws restart from the seed"
                )
        if rank == 0:
            log(f"[{stage.name}] resuming from checkpoint at step {main.global_steps}")
    else:
        state = {"epoch": 0, "samples": 0, "history": []}
    epoch, samples_seen, history = state["epoch"], state["samples"], state.get("history", [])

    def save_checkpoint(metrics: dict[str, float]) -> None:
        # [6] shard -> barrier -> rank 0 extras -> report
        with tempfile.TemporaryDirectory(prefix="s2o-ckpt-") as tmp:
            for name, engine in engines.items():
                engine.save_checkpoint(os.path.join(tmp, DEEPSPEED_DIR, name), tag=DEEPSPEED_TAG)
            generator_state = runtime.generator.get_state().tolist()
            # with where the rank ran: which node held which rank at this checkpoint, for a multi-node post-mortem
            Path(tmp, GENERATOR_FILE.format(rank=rank)).write_text(
                json.dumps({"torch_generator": generator_state, "node_id": node_id})
            )
            if rank == 0:
                save_file(
                    {k: v.contiguous() for k, v in ema.state_dict().items()}, os.path.join(tmp, EMA_FILE)
                )
                train_state = {
                    "step": main.global_steps,
                    "epoch": epoch,
                    "samples": samples_seen,
                    "metrics": metrics,
                    "history": history,
                }
                Path(tmp, TRAINER_STATE_FILE).write_text(json.dumps(train_state))
                card = {
                    "trained_steps": main.global_steps,
                    "samples_seen": samples_seen,
                    "data": loop_config.get("data_uri"),
                    "final_metrics": {k: round(v, 6) for k, v in metrics.items()},
                    "precision": precision,
                    "workers": world,
                }
                stage.export(
                    os.path.join(tmp, BUNDLE_DIR), ema, cfg, store, card, runtime.models.export_context
                )
            if world > 1:
                torch.distributed.barrier()
            ray.train.report(
                {**metrics, "step": main.global_steps}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
            )

    # [4] data -----------------------------------------------------------------------------------
    shard = ray.train.get_dataset_shard("train")
    shuffle_buffer = (cfg.data.shuffle_buffer or None) if loop_config.get("local_shuffle", True) else None
    collate = PairCollate(
        cfg.train.augment, np.random.default_rng(cfg.train.seed + 7919 * rank + epoch), device
    )
    window: dict[str, list[float]] = {}
    last_report_step = main.global_steps
    started, start_step = time.perf_counter(), main.global_steps
    window_start, window_samples, window_wait = time.perf_counter(), 0, 0.0
    metrics: dict[str, float] = {}

    # [5] loop ------------------------------------------------------------------------------------
    while main.global_steps < cfg.train.max_steps:
        batches = 0
        # the local buffer's order follows train.seed too: its own seed per rank and epoch (train/data_order.py)
        local_seed = shuffle_seed(cfg.train.seed, LOCAL, rank, epoch) if shuffle_buffer else None
        batch_iter = iter(
            shard.iter_torch_batches(
                batch_size=cfg.train.batch_size,
                collate_fn=collate,
                drop_last=True,
                local_shuffle_buffer_size=shuffle_buffer,
                local_shuffle_seed=local_seed,
            )
        )
        while True:
            # Time blocked on the data pipeline: the share of a window not spent training.
            waited = time.perf_counter()
            batch = next(batch_iter, None)
            window_wait += time.perf_counter() - waited
            if batch is None:
                break
            batches += 1
            step_metrics, stepped = runtime.step(batch)
            for key, value in step_metrics.items():
                window.setdefault(key, []).append(value)
            n = batch["optical"].shape[0]
            samples_seen += n * world
            window_samples += n * world
            if not stepped:
                continue  # inside a gradient-accumulation cycle
            step = main.global_steps
            if step % cfg.train.log_every_steps == 0 or step == cfg.train.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics = {k: float(np.mean(v)) for k, v in window.items()}
                metrics["samples_per_s"] = window_samples / max(elapsed, 1e-9)
                metrics["data_wait_frac"] = window_wait / max(elapsed, 1e-9)
                metrics["lr"] = float(main.get_lr()[0])
                history.append({"step": step, **metrics})
                if rank == 0:
                    rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
                    eta = format_eta((cfg.train.max_steps - step) / max(rate, 1e-9))
                    losses = " ".join(
                        f"{k} {v:.4f}"
                        for k, v in metrics.items()
                        if k not in ("samples_per_s", "lr", "data_wait_frac")
                    )
                    log(
                        f"[{stage.name}] step {step}/{cfg.train.max_steps} {losses} lr {metrics['lr']:.2e} "
                        f"{metrics['samples_per_s']:.1f} samples/s (data wait {metrics['data_wait_frac']:.0%}) ETA {eta}"
                    )
                    tracker.log_metrics(metrics, step)
                window, window_start, window_samples, window_wait = {}, time.perf_counter(), 0, 0.0
            if step % cfg.checkpoint.every_steps == 0 or step == cfg.train.max_steps:
                save_checkpoint(metrics or {k: float(np.mean(v)) for k, v in window.items()})
                last_report_step = step
            if step >= cfg.train.max_steps:
                break
        if batches == 0:
            raise RuntimeError("the training split yielded no full batch: lower train.batch_size or add data")
        epoch += 1
    if last_report_step != main.global_steps:
        save_checkpoint(metrics)
    return {"step": main.global_steps, "metrics": metrics}
