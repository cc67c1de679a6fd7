"""How the tiny presets were chosen: train candidate settings for the same wall-clock budget and score them.

    python benchmarks/preset_search.py teacher --seconds 240 --candidates base,bf16,small-bf16
    python benchmarks/preset_search.py gan --seconds 90

Every candidate trains in this process (no Ray, no DeepSpeed: the model and loss code the stages use,
under the same EMA rule) on the demo's synthetic tiles, for the same number of seconds, one after the
other on the same machine, then is scored on the same held-out test tiles (teacher: DDIM-50 with a fixed
noise seed; pix2pix: one forward pass). What it prints per candidate: steps reached, samples/s and PSNR
against the two baselines. The "Choosing the tiny presets" table of docs/MEASUREMENTS.md comes from this script.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch

from s2o_platform.config import DiffusionSection, UNetSection
from s2o_platform.data import synth
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import decode_batch
from s2o_platform.data.synth_writer import scene_tiles
from s2o_platform.data.transforms import augment_pairs
from s2o_platform.diffusion.sampling import sample_teacher
from s2o_platform.losses import discriminator_loss, generator_loss
from s2o_platform.models.pix2pix import PatchDiscriminator, UNetGenerator
from s2o_platform.models.unet import build_unet, count_parameters
from s2o_platform.train.ema import ema_decay_at, ema_update
from s2o_platform.train.schedule import lr_factor
from s2o_platform.train.stages.teacher import diffusion_loss, noise_scheduler

TEACHER_CANDIDATES: dict[str, dict] = {
    # the preset before this search: 3.6 M parameters, attention at 8x8, fp32
    "base": dict(channels=(32, 64, 96, 128), attn=True, batch=32, lr=1e-3, bf16=False),
    "base-bf16": dict(channels=(32, 64, 96, 128), attn=True, batch=32, lr=1e-3, bf16=True),
    "small-bf16": dict(channels=(32, 64, 64), attn=False, batch=64, lr=2e-3, bf16=True),
    "small-bf16-minsnr": dict(channels=(32, 64, 64), attn=False, batch=64, lr=2e-3, bf16=True, min_snr=5.0),
    "small-fp32": dict(channels=(32, 64, 64), attn=False, batch=64, lr=2e-3, bf16=False),
    "small-attn-bf16": dict(channels=(32, 64, 64), attn=True, batch=64, lr=2e-3, bf16=True),
    "wide-bf16": dict(channels=(48, 96, 96), attn=False, batch=64, lr=2e-3, bf16=True),
    "small-bf16-b32": dict(channels=(32, 64, 64), attn=False, batch=32, lr=2e-3, bf16=True),
    "small-bf16-lr1e-3": dict(channels=(32, 64, 64), attn=False, batch=64, lr=1e-3, bf16=True),
    "small-bf16-lr4e-3": dict(channels=(32, 64, 64), attn=False, batch=64, lr=4e-3, bf16=True),
}


GAN_CANDIDATES: dict[str, dict] = {
    # the preset before this search (its EMA now warms up)
    "base": dict(base=32, batch=32, lr=2e-4, bf16=False, ema=0.99),
    "base-bf16": dict(base=32, batch=32, lr=2e-4, bf16=True, ema=0.99),
    "lr1e-3-bf16": dict(base=32, batch=32, lr=1e-3, bf16=True, ema=0.99),
    "lr1e-3-b64-bf16": dict(base=32, batch=64, lr=1e-3, bf16=True, ema=0.99),
    "lr1e-3": dict(base=32, batch=32, lr=1e-3, bf16=False, ema=0.99),
}


def synthetic_tiles(pairs: int, size: int = 32, seed: int = 0) -> tuple[dict, dict]:
    """The demo store's tiles, made in memory: scenes 0..n-1, every tenth scene held out for testing."""
    norm = SarNormalization()
    per_scene = 16
    train, test = [], []
    for scene in range((pairs + per_scene - 1) // per_scene):
        rows, _ = scene_tiles(scene, per_scene, size, seed, "x", norm)
        (test if scene % 10 == 9 else train).extend(rows)

    def stack(rows):
        batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in ("tile_id", "sar", "optical")}
        batch["tile_size"] = np.full(len(rows), size)
        batch["sar_channels"] = np.ones(len(rows), dtype=int)
        d = decode_batch(batch)
        return {"sar": torch.from_numpy(d["sar"]), "optical": torch.from_numpy(d["optical"])}

    return stack(train), stack(test)


def unet_section(channels: tuple[int, ...], attn: bool) -> UNetSection:
    n = len(channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if attn:  # attention at the lowest resolution that still has a down-sampling block above it
        down[n - 2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNetSection(
        sample_size=32,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=16 if min(channels) % 32 else 32,
    )


def psnr01(prediction: torch.Tensor, target: torch.Tensor) -> float:
    p, t = (prediction.float().clamp(-1, 1) + 1) / 2, (target.float() + 1) / 2
    mse = ((p - t) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean())


class Budget:
    """Train for `seconds` of wall time, or for `steps` optimizer steps under a cosine schedule (when given)."""

    def __init__(self, seconds: float, steps: int | None):
        self.seconds, self.steps, self.began = seconds, steps, time.perf_counter()

    def more(self, step: int) -> bool:
        return step < self.steps if self.steps else time.perf_counter() - self.began < self.seconds

    def lr(self, base: float, step: int) -> float:
        if self.steps:
            return base * lr_factor(step, 50, self.steps, "cosine")
        return base * min(1.0, (step + 1) / 50)

    def elapsed(self) -> float:
        return time.perf_counter() - self.began


def batches(train: dict, batch: int, rng: np.random.Generator):
    n = len(train["sar"])
    while True:
        idx = rng.choice(n, batch, replace=False)
        sar, optical = augment_pairs(train["sar"][idx].numpy(), train["optical"][idx].numpy(), rng)
        yield torch.from_numpy(sar), torch.from_numpy(optical)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_gan(name: str, spec: dict, train: dict, test: dict, budget: Budget) -> dict:
    torch.manual_seed(0)
    gen = UNetGenerator(sample_size=32, in_channels=1, base_channels=spec["base"], dropout=0.5)
    disc = PatchDiscriminator(in_channels=4, base_channels=32, n_layers=2)
    ema = copy.deepcopy(gen).requires_grad_(False)
    opt_g = torch.optim.AdamW(gen.parameters(), lr=spec["lr"], betas=(0.5, 0.999), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=spec["lr"], betas=(0.5, 0.999), weight_decay=0.0)
    data, step = batches(train, spec["batch"], np.random.default_rng(0)), 0
    while budget.more(step):
        sar, optical = next(data)
        set_lr(opt_g, budget.lr(spec["lr"], step))
        set_lr(opt_d, budget.lr(spec["lr"], step))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["bf16"] else contextlib.nullcontext()
        with autocast:
            fake = gen(sar).float()
            disc.requires_grad_(False)
            loss_g = generator_loss(disc(sar, fake), "non_saturating") + 100.0 * (fake - optical).abs().mean()
            disc.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with autocast:
            loss_d = discriminator_loss(disc(sar, optical), disc(sar, fake.detach()), "non_saturating")
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        step += 1
        ema_update(ema, gen, ema_decay_at(step, spec["ema"]))
    trained = budget.elapsed()
    with torch.no_grad():
        score = psnr01(ema.eval()(test["sar"]), test["optical"])
    return {
        "name": name,
        "params_M": count_parameters(gen) / 1e6,
        "steps": step,
        "samples_per_s": step * spec["batch"] / trained,
        "psnr": score,
        "sampler": "one pass",
    }


def train_teacher(name: str, spec: dict, train: dict, test: dict, budget: Budget) -> dict:
    torch.manual_seed(0)
    unet = build_unet(unet_section(spec["channels"], spec["attn"]))
    scheduler = noise_scheduler(DiffusionSection(prediction_type="v_prediction"))
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=spec["lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    data, step = batches(train, spec["batch"], np.random.default_rng(0)), 0
    while budget.more(step):
        sar, optical = next(data)
        set_lr(opt, budget.lr(spec["lr"], step))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["bf16"] else contextlib.nullcontext()
        with autocast:
            loss = diffusion_loss(unet, scheduler, optical, sar, gen, min_snr_gamma=spec.get("min_snr"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        ema_update(ema, unet, ema_decay_at(step, 0.999))
    trained = budget.elapsed()
    with torch.no_grad():
        outs = [
            sample_teacher(
                ema,
                test["sar"][i : i + 64],
                dict(scheduler.config),
                "ddim",
                50,
                torch.Generator().manual_seed(i),
            )
            for i in range(0, len(test["sar"]), 64)
        ]
    score = psnr01(torch.cat(outs), test["optical"])
    return {
        "name": name,
        "params_M": count_parameters(unet) / 1e6,
        "steps": step,
        "samples_per_s": step * spec["batch"] / trained,
        "psnr": score,
        "sampler": "DDIM-50",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=["teacher", "gan"])
    parser.add_argument("--seconds", type=float, default=240.0, help="training wall time per candidate")
    parser.add_argument(
        "--steps", type=int, default=None, help="instead of --seconds: optimizer steps, cosine LR decay"
    )
    parser.add_argument("--candidates", default="base,small-bf16,small-bf16-minsnr")
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = synthetic_tiles(args.pairs)
    opt_u8 = ((test["optical"].numpy().transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)
    mean_rgb = opt_u8.reshape(-1, 3).mean(0) / 255
    mean_psnr = float(np.mean([synth.psnr(np.broadcast_to(mean_rgb, t.shape), t / 255) for t in opt_u8]))
    print(
        f"train tiles {len(train['sar'])}, test tiles {len(test['sar'])}, mean-colour PSNR {mean_psnr:.2f} dB; "
        f"budget {f'{args.steps} steps' if args.steps else f'{args.seconds:.0f} s'} per candidate",
        flush=True,
    )
    candidates, train_fn = (
        (TEACHER_CANDIDATES, train_teacher) if args.stage == "teacher" else (GAN_CANDIDATES, train_gan)
    )
    for name in args.candidates.split(","):
        result = train_fn(name, candidates[name], train, test, Budget(args.seconds, args.steps))
        print(
            f"{result['name']:<22} {result['params_M']:.2f} M params  {result['steps']:5d} steps  "
            f"{result['samples_per_s']:6.1f} samples/s  {result['sampler']} PSNR {result['psnr']:.2f} dB",
            flush=True,
        )


if __name__ == "__main__":
    main()
