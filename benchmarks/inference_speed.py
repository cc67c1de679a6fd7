"""Compiled against eager, bf16 against fp32, teacher against student: one run, the same tiles.

    python benchmarks/inference_speed.py --student runs/demo/runs/acd/bundle [--teacher runs/demo/runs/teacher/bundle]
        [--data STORE] [--tiles 32] [--batches 1 16] [--student-steps 1 2 4 8] [--teacher-steps 50]
        [--dtypes fp32 bf16] [--compile default] [--rounds 5] [--teacher-rounds 3] [--channels-last]
        [--freeze-variant] [--json FILE]

Every setting (network x steps x {eager, compiled} x dtype x batch size) runs through the platform's
own path (`translate_tiles`, with the network behind `inference_compile.CompiledNetwork` when compiled):

- quality: the first --tiles test tiles of --data (default: the store the student was trained on),
  translated at batch 16 with seed 0 by every setting; PSNR against the ground truth, and its
  difference to eager fp32 of the same network and steps (a setting whose |difference| is 0.1 dB or
  more is not offered by default);
- speed: latency of one call at batch 1 and throughput of one call at batch 16 (by default), after
  every shape has been compiled and warmed up; the timed calls of all settings of one network are
  interleaved over --rounds rounds (a busy machine slows all alike), and each ratio to eager fp32 is
  the median of the per-round ratios;
- compile cost: the seconds of each compiled shape's first call, and how many tiles a run must
  translate before compiling pays for itself (the break-even that decides `--compile` defaults).

The teacher (DDIM-N) and the student get exactly the same variants, so the speed-ups between them
compare like with like. The last line is `ratio=X.XX`: throughput of compiled bf16 (or, when it is not
offered, the best setting that is) against eager fp32, for the student at 4 steps (--ratio-steps) and
batch 16 (the largest of --batches). Goal on the 2-core CPU (issue 21): >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s2o_platform import storage  # noqa: E402
from s2o_platform.bundle import Bundle, load_bundle  # noqa: E402
from s2o_platform.devices import DTYPES, device_name, resolve_device, synchronize  # noqa: E402
from s2o_platform.evaluation.tiles import load_test_tiles  # noqa: E402
from s2o_platform.inference import translate_tiles  # noqa: E402
from s2o_platform.inference_compile import CompiledNetwork, CompilePlan, resolve_compile  # noqa: E402

PSNR_TOLERANCE_DB = 0.1
QUALITY_BATCH = 16


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over all pixels."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


@dataclass
class Variant:
    name: str  # e.g. "compiled bf16"
    compiled: bool
    dtype: str
    freeze: bool = False
    channels_last: bool = False


@dataclass
class Setting:
    net: str  # teacher | student
    sampler: str
    steps: int
    variant: Variant
    bundle: Bundle
    output: np.ndarray | None = None
    psnr: float = float("nan")
    delta_psnr: float = float("nan")
    psnr_vs_reference: float = float("nan")
    seconds: dict[int, list[float]] = field(default_factory=dict)  # batch -> per-round seconds
    ratio: dict[int, float] = field(default_factory=dict)  # batch -> median per-round ratio to eager fp32

    @property
    def label(self) -> str:
        return f"{self.net} {self.sampler.upper()}-{self.steps}"

    def rate(self, batch: int) -> float:
        return batch / statistics.median(self.seconds[batch])

    def latency_ms(self, batch: int = 1) -> float:
        return 1000 * statistics.median(self.seconds[batch]) / batch

    @property
    def offered(self) -> bool:
        return abs(self.delta_psnr) < PSNR_TOLERANCE_DB


def build_variants(args, device: torch.device) -> list[Variant]:
    variants = []
    for dtype in args.dtypes:
        variants.append(Variant(f"eager {dtype}", False, dtype))
        variants.append(Variant(f"compiled {dtype}", True, dtype))
    if args.freeze_variant and device.type == "cpu":
        variants.append(Variant(f"compiled {args.dtypes[-1]}, freezing", True, args.dtypes[-1], freeze=True))
    if args.channels_last:
        variants.append(
            Variant(f"eager {args.dtypes[-1]}, channels-last", False, args.dtypes[-1], channels_last=True)
        )
        variants.append(
            Variant(f"compiled {args.dtypes[-1]}, channels-last", True, args.dtypes[-1], channels_last=True)
        )
    return variants


def load_variant(
    path: str,
    variant: Variant,
    plan: CompilePlan,
    device: torch.device,
    max_batch: int,
    first_calls: dict[str, dict[int, float]],
    key: str,
) -> Bundle:
    bundle = load_bundle(path, device=device, dtype=DTYPES[variant.dtype])
    if variant.channels_last:
        # weights channels-last: every convolution then gives channels-last outputs (oneDNN follows the weight)
        bundle.model = bundle.model.to(memory_format=torch.channels_last)
    if variant.compiled:
        variant_plan = CompilePlan(
            plan.choice, plan.mode, plan.device_type, freeze=variant.freeze and device.type == "cpu"
        )
        bundle.model = CompiledNetwork(bundle.model, variant_plan, max_batch=max_batch, log_fn=lambda m: None)
        first_calls[key] = bundle.model.stats.first_call_s
    return bundle


def time_call(bundle: Bundle, sar: np.ndarray, sampler: str, steps: int, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    translate_tiles(bundle, sar, sampler, steps, seed=0, batch_size=len(sar))
    synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", required=True, help="the student's bundle")
    parser.add_argument("--teacher", help="the teacher's bundle (DDIM-N is timed with the same variants)")
    parser.add_argument(
        "--data", help="tile store for quality (default: the store named in the student's model card)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--tiles", type=int, default=32, help="tiles scored for quality (translated at batch 16)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--ratio-steps", type=int, default=4)
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["fp32", "bf16"],
        choices=sorted(DTYPES),
        help="the first is the reference",
    )
    parser.add_argument(
        "--compile", default="default", choices=["default", "max"], help="the compiled variants' --compile"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (student)")
    parser.add_argument("--teacher-rounds", type=int, default=3, help="interleaved timing rounds (teacher)")
    parser.add_argument(
        "--freeze-variant", action="store_true", help="also time compiled with inductor freezing (CPU)"
    )
    parser.add_argument("--channels-last", action="store_true", help="also time channels-last variants")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, all cores)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    plan = resolve_compile(args.compile, device)
    started_all = time.perf_counter()

    data = args.data
    if data is None:
        card = load_bundle(args.student).metadata.model_card
        data = card.get("data")
        if not data:
            raise SystemExit("the student's model card names no data store: pass --data STORE")
    tiles = load_test_tiles(data, args.split, args.tiles, storage.StorageOptions())
    sar, truth = tiles["sar"], tiles["optical"]
    max_batch = max(args.batches)
    batch_tiles = {b: np.resize(sar, (b, *sar.shape[1:])) for b in args.batches}
    variants = build_variants(args, device)
    reference_name = f"eager {args.dtypes[0]}"
    first_calls: dict[str, dict[int, float]] = {}
    nets = [("student", args.student, "lcm", args.student_steps, args.rounds)]
    if args.teacher:
        nets.append(("teacher", args.teacher, "ddim", [args.teacher_steps], args.teacher_rounds))
    print(
        f"device: {device_name(device)} ({cpu_model() if device.type == 'cpu' else ''}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; compiled = {plan.describe()}; {len(sar)} {args.split} tiles of {data}",
        flush=True,
    )

    settings: list[Setting] = []
    for net, path, sampler, step_list, rounds in nets:
        bundles = {}
        for v in variants:
            key = f"{net} {v.name}"
            bundles[v.name] = load_variant(path, v, plan, device, max_batch, first_calls, key)
            # compile (and warm) every shape now: the quality batch and each timed batch size, at 1 step
            warm_steps = 1 if sampler == "lcm" else 2
            for b in sorted({*args.batches, QUALITY_BATCH}):
                translate_tiles(
                    bundles[v.name],
                    np.resize(sar, (b, *sar.shape[1:])),
                    sampler,
                    warm_steps,
                    seed=0,
                    batch_size=b,
                )
            if v.compiled:
                print(
                    f"[compile] {key}: "
                    + ", ".join(f"batch {b} {s:.1f} s" for b, s in sorted(first_calls[key].items())),
                    flush=True,
                )
        group = [Setting(net, sampler, n, v, bundles[v.name]) for n in step_list for v in variants]
        for s in group:  # quality, same tiles and seed for every setting
            s.output = translate_tiles(s.bundle, sar, sampler, s.steps, seed=0, batch_size=QUALITY_BATCH)
            s.psnr = psnr(s.output, truth)
        for s in group:
            ref = next(r for r in group if r.steps == s.steps and r.variant.name == reference_name)
            s.delta_psnr = s.psnr - ref.psnr
            s.psnr_vs_reference = psnr(s.output, ref.output)
        for r in range(rounds):  # speed, interleaved
            for b in args.batches:
                for s in group:
                    s.seconds.setdefault(b, []).append(
                        time_call(s.bundle, batch_tiles[b], sampler, s.steps, device)
                    )
            print(
                f"[time] {net}: round {r + 1}/{rounds} ({time.perf_counter() - started_all:.0f} s so far)",
                flush=True,
            )
        for s in group:
            ref = next(r for r in group if r.steps == s.steps and r.variant.name == reference_name)
            for b in args.batches:
                s.ratio[b] = statistics.median(e / t for e, t in zip(ref.seconds[b], s.seconds[b]))
        settings += group

    lo, hi = min(args.batches), max(args.batches)
    print()
    print(
        f"| setting | variant | ms/img, batch {lo} | tiles/s, batch {hi} | x {reference_name} (b{lo} / b{hi}) | "
        f"PSNR dB | dPSNR vs {reference_name} | PSNR vs its output | offered |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in settings:
        print(
            f"| {s.label} | {s.variant.name} | {s.latency_ms(lo):.1f} | {s.rate(hi):.1f} | {s.ratio[lo]:.2f} / {s.ratio[hi]:.2f} | "
            f"{s.psnr:.2f} | {s.delta_psnr:+.3f} | {'-' if s.variant.name == reference_name else f'{s.psnr_vs_reference:.1f}'} | "
            f"{'yes' if s.offered else 'no'} |"
        )

    print()
    print(
        "Compile cost: seconds of each compiled shape's first call (compile + one network call), and the tiles a run "
        "must translate before compiling pays off (compile seconds / seconds saved per tile at the largest batch):"
    )
    for key, calls in first_calls.items():
        net, name = key.split(" ", 1)
        total = sum(calls.values())
        eager_name = name.replace("compiled", "eager").split(",")[0]
        pairs = [
            (
                s,
                next(
                    (
                        e
                        for e in settings
                        if e.net == net and e.steps == s.steps and e.variant.name == eager_name
                    ),
                    None,
                ),
            )
            for s in settings
            if s.net == net and s.variant.name == name
        ]
        breaks = []
        for s, e in pairs:
            if e is None:
                continue
            saved = 1 / e.rate(hi) - 1 / s.rate(hi)
            breaks.append(
                f"{s.sampler}-{s.steps}: "
                + (f"{calls.get(hi, total) / saved:.0f} tiles" if saved > 0 else "never")
            )
        print(
            f"- {key}: {', '.join(f'batch {b} {t:.1f} s' for b, t in sorted(calls.items()))} (total {total:.1f} s); "
            f"break-even at batch {hi}: {'; '.join(breaks)}"
        )

    if args.teacher:
        print()
        print(
            f"Speed-up of the student over the teacher's DDIM-{args.teacher_steps}, the same variant on both "
            f"(latency at batch {lo} / throughput at batch {hi}):"
        )
        for v in variants:
            t = next(s for s in settings if s.net == "teacher" and s.variant.name == v.name)
            parts = [
                f"{s.steps} step(s) {t.latency_ms(lo) / s.latency_ms(lo):.1f}x / {s.rate(hi) / t.rate(hi):.1f}x"
                for s in settings
                if s.net == "student" and s.variant.name == v.name
            ]
            print(f"- {v.name}: " + "; ".join(parts))

    candidates = [
        s
        for s in settings
        if s.net == "student"
        and s.steps == args.ratio_steps
        and s.offered
        and s.variant.name != reference_name
    ]
    preferred = next((s for s in candidates if s.variant.name == f"compiled {args.dtypes[-1]}"), None)
    chosen = preferred or max(candidates, key=lambda s: s.ratio[hi], default=None)
    seconds = time.perf_counter() - started_all
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device_name(device),
                    "cpu": cpu_model(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "compile": plan.describe(),
                    "seconds": seconds,
                    "first_calls": first_calls,
                    "settings": [
                        {
                            "setting": s.label,
                            "variant": s.variant.name,
                            "latency_ms_b1": s.latency_ms(lo),
                            "tiles_per_s": s.rate(hi),
                            "ratio": s.ratio,
                            "psnr": s.psnr,
                            "delta_psnr": s.delta_psnr,
                            "psnr_vs_reference": s.psnr_vs_reference,
                            "offered": bool(s.offered),
                        }
                        for s in settings
                    ],
                },
                indent=1,
            )
        )
    print()
    print(f"run took {seconds:.0f} s")
    if chosen is None:
        print(
            f"no setting of the student at {args.ratio_steps} steps is within {PSNR_TOLERANCE_DB} dB of {reference_name}"
        )
        print("ratio=0.00")
        return
    print(
        f"ratio: {chosen.variant.name} against {reference_name}, student {args.ratio_steps} steps, batch {hi}: "
        f"{chosen.rate(hi):.1f} vs {next(s for s in settings if s.net == 'student' and s.steps == args.ratio_steps and s.variant.name == reference_name).rate(hi):.1f} tiles/s (goal >= 1.5)"
    )
    print(f"ratio={chosen.ratio[hi]:.2f}")


if __name__ == "__main__":
    main()
