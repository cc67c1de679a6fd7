"""Quality and speed of several bundles on the same test tiles and seeds, in one run.

    python benchmarks/compare_models.py --data STORE \
        --model teacher=runs/teacher/bundle@ddim:50 --model acd=runs/acd/bundle@lcm:1,2,4,8 \
        --model cd=runs/cd/bundle@lcm:4 --model pix2pix=runs/gan/bundle [--limit 128] [--batch-size 64]

Quality: mean per-tile PSNR (images in [0, 1]) and mean per-channel colour error (|mean predicted
colour - mean true colour| per tile, 0-255 units, averaged over tiles and channels). Speed: latency
per image at batch 1 after warm-up (median of --repeats), and per-image time at --batch-size. Same
tiles (test split, sorted by tile id), same seed for every model. To be replaced by `s2o eval`.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from s2o_platform import storage
from s2o_platform.bundle import load_bundle
from s2o_platform.data.store import decode_batch, read_metadata, shard_paths
from s2o_platform.data.synth import psnr
from s2o_platform.inference import translate_tiles


def parse_model(text: str) -> tuple[str, str, str | None, list[int | None]]:
    name, rest = text.split("=", 1)
    path, _, sampler_spec = rest.partition("@")
    if not sampler_spec:
        return name, path, None, [None]
    sampler, _, steps = sampler_spec.partition(":")
    return name, path, sampler, [int(s) for s in steps.split(",")] if steps else [None]


def test_tiles(store: str, limit: int) -> dict[str, np.ndarray]:
    fs, _ = storage.resolve(store)
    table = pq.ParquetDataset(shard_paths(store, ["test"]), filesystem=fs).read().sort_by("tile_id").slice(0, limit)
    return decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})


def time_per_image(bundle, sar: np.ndarray, sampler, steps, batch: int, repeats: int) -> float:
    """Median seconds per image over `repeats` calls on `batch` tiles, after one warm-up call."""
    tiles = sar[:batch] if len(sar) >= batch else np.repeat(sar, int(np.ceil(batch / len(sar))), axis=0)[:batch]
    translate_tiles(bundle, tiles, sampler, steps, seed=0, batch_size=batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        translate_tiles(bundle, tiles, sampler, steps, seed=0, batch_size=batch)
        times.append((time.perf_counter() - started) / batch)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=BUNDLE[@SAMPLER:STEPS[,STEPS...]]")
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    batch = test_tiles(args.data, args.limit)
    target = (batch["optical"] + 1) / 2
    rows = []
    for spec in args.model:
        name, path, sampler, steps_list = parse_model(spec)
        bundle = load_bundle(path)
        for steps in steps_list:
            prediction = (translate_tiles(bundle, batch["sar"], sampler, steps, seed=args.seed, batch_size=args.batch_size) + 1) / 2
            scores = [psnr(p, t) for p, t in zip(prediction, target)]
            colour = np.abs(prediction.mean(axis=(2, 3)) - target.mean(axis=(2, 3))).mean() * 255
            label = f"{name} {bundle.metadata.sampler.name if sampler is None else sampler}-{steps or bundle.metadata.sampler.default_steps}"
            latency = time_per_image(bundle, batch["sar"], sampler, steps, 1, args.repeats)
            batched = time_per_image(bundle, batch["sar"], sampler, steps, args.batch_size, 1)
            rows.append((label, float(np.mean(scores)), float(colour), latency, batched))
            print(f"measured {label}", flush=True)
    baselines = read_metadata(args.data).extra.get("synthetic", {}).get("baseline_psnr")
    reference = rows[0][3]
    print(f"\n{len(target)} test tiles, seed {args.seed}, device cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)")
    print(f"{'model':<22}{'PSNR dB':>9}{'colour err':>12}{'ms/img b1':>11}{'ms/img b' + str(args.batch_size):>12}{'speed-up vs ' + rows[0][0]:>28}")
    for label, p, c, lat, bat in rows:
        print(f"{label:<22}{p:>9.2f}{c:>12.2f}{lat * 1000:>11.1f}{bat * 1000:>12.2f}{reference / lat:>28.1f}x")
    if baselines:
        print(f"baselines (whole store): mean colour {baselines['mean_colour']:.2f} dB, class oracle {baselines['class_oracle']:.2f} dB")


if __name__ == "__main__":
    main()
