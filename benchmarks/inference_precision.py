"""Inference precision of one trained bundle: bf16 (or fp16) against fp32, side by side in one run.

    python benchmarks/inference_precision.py --bundle runs/demo/runs/acd/bundle --data runs/demo/store
    python benchmarks/inference_precision.py ... --device cuda --dtypes fp32 fp16 bf16

Same test tiles, same seed, same sampler and steps for every dtype; the rounds interleave the dtypes
so a noisy machine slows them alike. Prints, per dtype: throughput (tiles/s, median over rounds) and
its ratio to fp32, PSNR against the ground truth, and the PSNR of its output against fp32's (how far
rounding moves the picture). This is what `--dtype auto` on a CPU is chosen from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from s2o_platform.bundle import load_bundle
from s2o_platform.data.store import decode_batch, read_tiles
from s2o_platform.devices import DTYPES, device_name, resolve_device
from s2o_platform.evaluation.quality import tile_scores, to_unit
from s2o_platform.inference import translate_tiles


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True, help="tile store; its test split is translated")
    parser.add_argument("--tiles", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    args = parser.parse_args()

    device = resolve_device(args.device)
    rows = read_tiles(args.data, "test").take_batch(args.tiles, batch_format="numpy")
    tiles = decode_batch(rows)
    sar, truth = tiles["sar"], tiles["optical"]
    bundles = {name: load_bundle(args.bundle, device=device, dtype=DTYPES[name]) for name in args.dtypes}
    outputs: dict[str, np.ndarray] = {}
    seconds: dict[str, list[float]] = {name: [] for name in args.dtypes}
    for name, bundle in bundles.items():  # warm-up (first-call kernel selection) and the outputs compared
        outputs[name] = translate_tiles(bundle, sar, steps=args.steps, seed=0, batch_size=args.batch_size)
    for _ in range(args.rounds):
        for name, bundle in bundles.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            translate_tiles(bundle, sar, steps=args.steps, seed=0, batch_size=args.batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)

    reference = args.dtypes[0]
    base = len(sar) / statistics.median(seconds[reference])
    print(
        f"device: {device_name(device)}, torch threads {torch.get_num_threads()}; bundle {args.bundle} "
        f"({bundles[reference].metadata.stage}), {len(sar)} test tiles of {args.data}, {args.rounds} interleaved rounds"
    )
    print(
        f"| dtype | tiles/s | ratio to {reference} | PSNR vs truth dB | mean tile PSNR dB | PSNR vs {reference} output dB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    results = {}
    for name in args.dtypes:
        rate = len(sar) / statistics.median(seconds[name])
        per_tile = tile_scores(to_unit(outputs[name]), to_unit(truth))["psnr"]
        row = {
            "tiles_per_s": rate,
            "ratio": rate / base,
            "psnr_vs_truth": psnr(outputs[name], truth),
            "mean_tile_psnr": float(np.mean(per_tile)),
            "psnr_vs_reference": psnr(outputs[name], outputs[reference]),
        }
        results[name] = row
        print(
            f"| {name} | {rate:.1f} | {row['ratio']:.2f} | {row['psnr_vs_truth']:.2f} | {row['mean_tile_psnr']:.2f} | "
            f"{row['psnr_vs_reference']:.1f} |"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
