"""Teacher vs student vs pix2pix latency of a preset's architectures, side by side in one run.

    python benchmarks/sampler_latency.py --preset paper            # GPU: fp32, fp16, bf16
    python benchmarks/sampler_latency.py --preset tiny --device cpu --skip-ddpm

Speed does not depend on the weights, so the networks are freshly initialised from
configs/PRESET/{teacher,gan}.yaml (the student has the teacher's architecture), written as real
inference bundles by the stages' own exporters and loaded back with `load_bundle`: the timed path is
the one `s2o eval`, batch translation and serving use (`translate_tiles`). Per dtype: latency per
image at batch 1 after warm-up (synchronised on GPU) and the best throughput over --batch-sizes;
speed-ups against teacher DDPM (all training steps) and DDIM-50 of the same dtype, same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from s2o_platform.bundle import load_bundle
from s2o_platform.config import TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.devices import DTYPES, device_name, resolve_device
from s2o_platform.evaluation.runner import measure_latency, measure_throughput
from s2o_platform.evaluation.spec import ModelSetting
from s2o_platform.models.unet import count_parameters
from s2o_platform.train.untrained import write_untrained_bundles

ROOT = Path(__file__).resolve().parent.parent


def write_bundles(preset: str, directory: Path, sar_channels: int) -> dict[str, str]:
    teacher_cfg = load_config(TeacherConfig, ROOT / "configs" / preset / "teacher.yaml", [])
    tile = teacher_cfg.model_tile_size() or 32  # a preset that leaves the size to the store: the demo's 32 px
    store = StoreMetadata(tile_size=tile, sar_channels=sar_channels, sar_normalization=SarNormalization())
    paths = write_untrained_bundles(ROOT / "configs" / preset, directory, store)
    teacher = load_bundle(paths["teacher"]).model
    generator = load_bundle(paths["gan"]).model
    print(
        f"{preset}: teacher/student {count_parameters(teacher) / 1e6:.1f} M parameters, pix2pix "
        f"{count_parameters(generator) / 1e6:.1f} M, {store.tile_size} px tiles",
        flush=True,
    )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", help="configs/ folder: tiny or paper")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtypes", default=None, help="comma list of fp32,fp16,bf16 (default: all on GPU, fp32 on CPU)"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help="comma list (default 1,8,32,64 on GPU; 1,16 on CPU)"
    )
    parser.add_argument("--student-steps", default="1,2,4,8")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument(
        "--ddpm-max-batch", type=int, default=8, help="largest batch DDPM (all steps) throughput is timed at"
    )
    parser.add_argument("--skip-ddpm", action="store_true", help="leave out ancestral DDPM (slow on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sar-channels", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    dtypes = (args.dtypes or ("fp16,bf16,fp32" if gpu else "fp32")).split(",")
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32,64" if gpu else "1,16")).split(",")]
    if gpu:
        torch.backends.cudnn.benchmark = True
    results = {
        "device": device_name(device),
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="s2o-latency-") as tmp:
        paths = write_bundles(args.preset, Path(tmp), args.sar_channels)
        for dtype in dtypes:
            settings = ([] if args.skip_ddpm else [("teacher", "ddpm", 1000)]) + [
                ("teacher", "ddim", args.ddim_steps)
            ]
            settings += [("student", "lcm", int(n)) for n in args.student_steps.split(",")] + [
                ("gan", "direct", 1)
            ]
            bundles = {k: load_bundle(p, device=device, dtype=DTYPES[dtype]) for k, p in paths.items()}
            size = bundles["teacher"].metadata.tile_size
            rng = np.random.default_rng(0)
            sar = rng.uniform(-1, 1, (max(batch_sizes), args.sar_channels, size, size)).astype(np.float32)
            rows = []
            for stage, sampler, steps in settings:
                if sampler == "ddpm":
                    steps = bundles["teacher"].scheduler_config["num_train_timesteps"]
                setting = ModelSetting(stage, paths[stage], sampler, steps)
                latency = measure_latency(bundles[stage], setting, sar, device, args.repeats)
                best = (1, 1000.0 / latency)
                sizes = (
                    [max([b for b in batch_sizes if b <= args.ddpm_max_batch], default=1)]
                    if sampler == "ddpm"
                    else batch_sizes
                )
                for b in sizes:
                    if b > 1:
                        thr = measure_throughput(bundles[stage], setting, sar, b, device)
                        best = max(best, (b, thr), key=lambda x: x[1])
                rows.append(
                    {
                        "dtype": dtype,
                        "model": setting.label,
                        "latency_ms": latency,
                        "best_batch": best[0],
                        "throughput": best[1],
                    }
                )
                print(
                    f"  {dtype} {setting.label}: {latency:.1f} ms/img at batch 1, {best[1]:.1f} img/s at batch {best[0]}",
                    flush=True,
                )
            ref = {
                r["model"].split()[1].split("-")[0]: r["latency_ms"]
                for r in rows
                if r["model"].startswith("teacher")
            }
            for r in rows:
                r["speedup_vs_ddpm"] = ref["ddpm"] / r["latency_ms"] if "ddpm" in ref else None
                r["speedup_vs_ddim"] = ref["ddim"] / r["latency_ms"]
            results["rows"] += rows
            if args.json:  # written after every dtype: a run cut short still leaves its figures
                args.json.write_text(json.dumps(results, indent=2))
            del bundles
            if gpu:
                torch.cuda.empty_cache()
    print(
        f"\n{results['device']}, preset {args.preset}, {results['threads']} CPU threads; latency at batch 1, "
        f"best throughput over batch sizes {batch_sizes} (DDPM up to {args.ddpm_max_batch})"
    )
    print(
        f"{'dtype':<6}{'model':<22}{'ms/img b1':>11}{'best img/s':>12}{'@batch':>8}{'x DDPM':>9}{'x DDIM-' + str(args.ddim_steps):>11}"
    )
    for r in results["rows"]:
        x_ddpm = f"{r['speedup_vs_ddpm']:.1f}x" if r["speedup_vs_ddpm"] else "-"
        print(
            f"{r['dtype']:<6}{r['model']:<22}{r['latency_ms']:>11.2f}{r['throughput']:>12.2f}{r['best_batch']:>8}{x_ddpm:>9}{r['speedup_vs_ddim']:>10.1f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
