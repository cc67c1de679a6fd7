"""Training throughput: Ray Train + DeepSpeed + Ray Data against a plain single-process PyTorch loop.

Same model (the tiny teacher preset unless --config says otherwise), same micro-batch, same data
(the train split of one store), same decode + augmentation, same torch thread count, measured in
one run, alternating in rounds. Prints samples/s of both and their ratio (target: >= 0.9 with one
worker). Steady state only: the first --warmup-steps of each are not timed.

    python benchmarks/train_throughput.py [--config configs/tiny/teacher.yaml] [--rounds 3] [--steps 60] [--decompose]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from s2o_platform import storage
from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.data.store import shard_paths
from s2o_platform.devices import cpu_threads
from s2o_platform.models.unet import build_unet
from s2o_platform.train.collate import TRAIN_COLUMNS, PairCollate
from s2o_platform.train.ema import ema_update
from s2o_platform.train.stages.teacher import diffusion_loss, noise_scheduler


def in_memory_loop(cfg: TeacherConfig, store: str, steps: int, warmup: int, train_step) -> float:
    """samples/s of `train_step(batch)` over in-memory rows of the train split, shuffled per epoch, with the
    platform's decode + paired augmentation; the first `warmup` steps are not timed."""
    torch.set_num_threads(cpu_threads(cfg.scaling.torch_threads, 1))
    fs, _ = storage.resolve(store)
    table = pq.ParquetDataset(shard_paths(store, ["train"]), filesystem=fs).read(columns=TRAIN_COLUMNS)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in TRAIN_COLUMNS}
    n = table.num_rows
    collate = PairCollate(cfg.train.augment, np.random.default_rng(0), torch.device("cpu"))
    rng = np.random.default_rng(0)
    b = cfg.train.batch_size
    order = rng.permutation(n)
    cursor, started = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        if cursor + b > n:
            order, cursor = rng.permutation(n), 0
        idx = order[cursor : cursor + b]
        cursor += b
        train_step(collate({c: v[idx] for c, v in rows.items()}))
    return steps * b / (time.perf_counter() - started)


def plain_pytorch(cfg: TeacherConfig, store: str, steps: int, warmup: int) -> float:
    """samples/s of a bare loop: in-memory rows -> collate -> loss -> backward -> clip -> AdamW -> EMA."""
    torch.manual_seed(cfg.train.seed)
    unet = build_unet(cfg.model)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    scheduler = noise_scheduler(cfg.diffusion)

    def train_step(batch):
        loss = diffusion_loss(unet, scheduler, batch["optical"], batch["sar"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.train.grad_clip)
        optimizer.step()
        ema_update(ema, unet, cfg.train.ema_decay)  # the platform keeps an EMA too: same work on both sides

    return in_memory_loop(cfg, store, steps, warmup, train_step)


def deepspeed_alone(cfg: TeacherConfig, store: str, steps: int, warmup: int) -> float:
    """samples/s of the same loop with the model in a DeepSpeed engine built from the platform's config, no Ray:
    separates DeepSpeed's per-step cost from Ray's (Data iterator, Train worker)."""
    import deepspeed

    from s2o_platform.train.deepspeed_config import deepspeed_config
    from s2o_platform.train.runtime import ensure_process_group
    from s2o_platform.train.schedule import lr_factor

    ensure_process_group()
    torch.manual_seed(cfg.train.seed)
    unet = build_unet(cfg.model)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.lr_schedule),
    )
    engine, _, _, _ = deepspeed.initialize(
        model=unet,
        optimizer=optimizer,
        lr_scheduler=lr_sched,
        config=deepspeed_config(cfg, "fp32"),
        dist_init_required=False,
    )
    if cfg.deepspeed.zero_stage == 0:
        engine.enable_backward_allreduce = False  # as the harness does with one worker
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = noise_scheduler(cfg.diffusion)

    def train_step(batch):
        loss = diffusion_loss(engine, scheduler, batch["optical"], batch["sar"])
        engine.backward(loss)
        engine.step()
        ema_update(ema, engine.module, cfg.train.ema_decay)

    return in_memory_loop(cfg, store, steps, warmup, train_step)


def ray_train(cfg: TeacherConfig, store: str, steps: int, warmup: int) -> float:
    """samples/s of `s2o train teacher` (one worker), from its own per-window measurements after warm-up."""
    from s2o_platform.train.launcher import run_training

    window = 10
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.train.max_steps = warmup + steps
    run_cfg.train.log_every_steps = window
    run_cfg.checkpoint.every_steps = warmup + steps  # one checkpoint, at the end
    with tempfile.TemporaryDirectory() as out:
        result = run_training("teacher", run_cfg, store, out, run_cfg.model.sample_size, log=lambda m: None)
    timed = [h for h in result.history if h["step"] > warmup]
    # Each window covers `window` steps: the harmonic mean of rates is total samples / total time.
    return len(timed) / sum(1.0 / h["samples_per_s"] for h in timed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "tiny", "teacher.yaml")
    )
    parser.add_argument("--data", help="tile store; default: a fresh synthetic one (1024 pairs)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved plain/Ray rounds (the ratio is their median)"
    )
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop and round")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument(
        "--decompose", action="store_true", help="also time the DeepSpeed engine without Ray in each round"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads on both sides (default: the config's scaling.torch_threads, else all cores)",
    )
    args = parser.parse_args()

    from s2o_platform.ray_cluster import connect

    cfg = load_config(TeacherConfig, args.config)
    cfg = cfg.sized_for_store(
        cfg.model_tile_size() or 32
    )  # a preset that leaves the size to the store: 32 px tiles
    if args.torch_threads:
        cfg.scaling.torch_threads = args.torch_threads
    threads = cpu_threads(cfg.scaling.torch_threads, 1)
    print(
        f"cluster: {connect()}; batch {cfg.train.batch_size}, {threads} torch threads, {os.cpu_count()} cores, device cpu"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = args.data
        if store is None:
            from s2o_platform.data.synth_writer import run_synth

            store = os.path.join(tmp, "store")
            run_synth(store, pairs=1024, size=cfg.model.sample_size, progress=False)
        # This machine is shared and its speed drifts over minutes, more than the effect measured.
        # So the loops alternate in short rounds (plain, [DeepSpeed alone], Ray, ..., plain) and each
        # Ray figure is compared with the plain runs just before and after it; the median over rounds
        # is the result. The Ray cluster is up throughout, so both sides run beside its processes.
        plain = [plain_pytorch(cfg, store, args.steps, args.warmup_steps)]
        print(f"round 0: plain {plain[0]:6.1f} samples/s", flush=True)
        ray_rates, alone_rates = [], []
        for round_no in range(1, args.rounds + 1):
            line = f"round {round_no}:"
            if args.decompose:
                alone_rates.append(deepspeed_alone(cfg, store, args.steps, args.warmup_steps))
                line += f" DeepSpeed alone {alone_rates[-1]:6.1f}"
            ray_rates.append(ray_train(cfg, store, args.steps, args.warmup_steps))
            plain.append(plain_pytorch(cfg, store, args.steps, args.warmup_steps))
            print(
                f"{line} Ray Train + DeepSpeed (1 worker) {ray_rates[-1]:6.1f}, plain {plain[-1]:6.1f} samples/s",
                flush=True,
            )

    def ratios(rates: list[float]) -> list[float]:
        return [rate / ((plain[i] + plain[i + 1]) / 2) for i, rate in enumerate(rates)]

    ray_ratios = ratios(ray_rates)
    print(
        f"plain PyTorch loop:            {statistics.median(plain):6.1f} samples/s (median of {len(plain)})"
    )
    print(
        f"Ray Train + DeepSpeed (1 wkr): {statistics.median(ray_rates):6.1f} samples/s (median of {len(ray_rates)})"
    )
    if args.decompose:
        alone_ratios = ratios(alone_rates)
        print(
            f"ratio DeepSpeed alone/plain:   {statistics.median(alone_ratios):6.3f}  (rounds: {' '.join(f'{r:.3f}' for r in alone_ratios)})"
        )
    print(
        f"ratio Ray/plain:               {statistics.median(ray_ratios):6.3f}  (rounds: {' '.join(f'{r:.3f}' for r in ray_ratios)}; target >= 0.9)"
    )


if __name__ == "__main__":
    main()
