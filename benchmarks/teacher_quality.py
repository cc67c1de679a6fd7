"""Does the teacher learn? Mean per-tile PSNR of a teacher bundle on a store's test split, beside the
store's synthetic baselines (mean colour; class oracle). Images in [0, 1]; fixed seeds.

    python benchmarks/teacher_quality.py --bundle runs/teacher/bundle --data runs/store [--steps 50] [--limit 256]

To be replaced by `s2o eval` (issue 5), which adds SSIM, FID and timing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from s2o_platform.bundle import load_bundle
from s2o_platform.data.store import decode_batch, read_metadata
from s2o_platform.data.synth import psnr
from s2o_platform.inference import translate_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--limit", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from s2o_platform import storage
    from s2o_platform.data.store import shard_paths

    fs, _ = storage.resolve(args.data)
    table = pq.ParquetDataset(shard_paths(args.data, ["test"]), filesystem=fs).read()
    table = table.sort_by("tile_id").slice(0, args.limit)
    batch = decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
    bundle = load_bundle(args.bundle)
    started = time.perf_counter()
    prediction = translate_tiles(bundle, batch["sar"], args.sampler, args.steps, seed=args.seed)
    seconds = time.perf_counter() - started
    target = (batch["optical"] + 1) / 2
    scores = [psnr((p + 1) / 2, t) for p, t in zip(prediction, target)]
    colour_error = np.abs(((prediction + 1) / 2).mean(axis=(2, 3)) - target.mean(axis=(2, 3))).mean(axis=0) * 255
    print(f"tiles: {len(scores)} (test split), sampler {args.sampler}-{args.steps}, {seconds / len(scores) * 1000:.0f} ms/tile")
    print(f"teacher PSNR:           {np.mean(scores):.2f} dB")
    baselines = read_metadata(args.data).extra.get("synthetic", {}).get("baseline_psnr")
    if baselines:
        print(f"mean-colour baseline:   {baselines['mean_colour']:.2f} dB (whole store)")
        print(f"class-oracle baseline:  {baselines['class_oracle']:.2f} dB (whole store)")
    print(f"mean per-channel colour error (0-255): R {colour_error[0]:.1f}, G {colour_error[1]:.1f}, B {colour_error[2]:.1f}")


if __name__ == "__main__":
    main()
