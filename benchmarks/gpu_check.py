"""One command that checks the whole GPU path: every stage's training step, the samplers and the
model loader, in bf16 and fp16, at the paper size, in one process.

    python benchmarks/gpu_check.py                          # on a CUDA machine: paper size, bf16 + fp16
    python benchmarks/gpu_check.py --device cpu --preset tiny --precisions bf16   # the script itself, here

Per precision: the teacher, ACD (adversarial) and ablation distillation, and pix2pix each run
--steps optimizer steps through the platform's own runtime (train/runtime.py: real DeepSpeed
engines, the stage's step, the EMA from fp32 masters), on random 256 px batches; the teacher's EMA
is exported as a bundle and distilled from, as the real pipeline does. Then the exported bundles
load through `LoadedModel` in that dtype and sample: teacher DDIM-50, student LCM 1/2/4/8 steps,
pix2pix; and (on a GPU, --compile default) the student at 1 step, batch 1, eager against compiled
with CUDA graphs (issue 21's latency goal). Prints one line per check (pass/FAIL, seconds per step or call, peak GPU memory) and a
summary; exits 1 when anything failed. Random data: this checks that the path runs and stays
finite, not quality.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from s2o_platform.config import DistillConfig, GanConfig, TeacherConfig, load_config
from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import StoreMetadata
from s2o_platform.inference import LoadedModel
from s2o_platform.train.runtime import build_runtime, ensure_process_group

ROOT = Path(__file__).resolve().parent.parent


class Checks:
    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def run(self, name: str, fn) -> object:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        started = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as err:  # noqa: BLE001 - every check is reported, the rest go on
            detail = f"{type(err).__name__}: {err}"
            traceback.print_exc()
            ok = False
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if self.device.type == "cuda" else "-"
        self.rows.append((name, ok, seconds, memory, detail))
        print(f"{'pass' if ok else 'FAIL'} | {name} | {seconds:.2f} s | peak {memory} | {detail}", flush=True)
        return detail if ok else None


def random_batch(n: int, size: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sar": (torch.rand(n, 1, size, size, generator=g) * 2 - 1).to(device),
        "optical": (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device),
    }


def train_steps(
    stage: str, cfg, store: StoreMetadata, extra: dict, device: torch.device, steps: int, batch: int
):
    runtime = build_runtime(stage, cfg, store, extra, device)
    times = []
    for i in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics, stepped = runtime.step(random_batch(batch, store.tile_size, device, i))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if not all(np.isfinite(v) for v in metrics.values()):
            raise RuntimeError(f"non-finite metrics at step {i + 1}: {metrics}")
    dtype = next(runtime.main.module.parameters()).dtype
    summary = (
        f"{runtime.precision} weights {str(dtype).removeprefix('torch.')}; {np.median(times[1:] or times):.3f} s/step after the first; "
        + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("loss"))
    )
    return runtime, summary


def student_latency(
    bundle: str, device: torch.device, precision: str, compile_choice: str, one: np.ndarray, repeats: int
) -> str:
    """The issue-21 figure: the student at 1 step, batch 1, through LoadedModel, eager against compiled
    (on a GPU --compile default is CUDA-graph capture), median ms per call after warm-up."""
    import statistics

    models = {
        "eager": LoadedModel(bundle, device=device.type, dtype=precision, sampler="lcm", batch_size=1),
        "compiled": LoadedModel(
            bundle, device=device.type, dtype=precision, sampler="lcm", batch_size=1, compile=compile_choice
        ),
    }
    ms, outputs = {}, {}
    for label, model in models.items():
        for _ in range(3):
            model.translate(one, "warm-up", steps=1)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            outputs[label] = model.translate(one, "check", steps=1)  # returns host memory: synchronised
            times.append(time.perf_counter() - started)
        ms[label] = 1000 * statistics.median(times)
    if not np.isfinite(outputs["compiled"]).all():
        raise RuntimeError("the compiled model produced non-finite values")
    diff = float(np.abs(outputs["compiled"] - outputs["eager"]).max())
    return (
        f"eager {ms['eager']:.2f} ms, compiled {ms['compiled']:.2f} ms ({models['compiled'].compile_plan.describe()}; "
        f"goal <= 6 ms for the paper size on an H200); max |compiled - eager| {diff:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage and precision")
    parser.add_argument("--batch", type=int, default=2, help="micro-batch per step")
    parser.add_argument(
        "--compile",
        default=None,
        choices=["off", "default", "max"],
        help="also time the student at 1 step, batch 1, eager against compiled (default on a GPU: "
        "default, i.e. torch.compile reduce-overhead with CUDA graphs; off on a CPU)",
    )
    parser.add_argument("--latency-repeats", type=int, default=50)
    args = parser.parse_args()
    if args.compile is None:
        args.compile = "default" if args.device.startswith("cuda") else "off"

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device here: run on a GPU machine, or check the script with --device cpu --preset tiny"
        )
    ensure_process_group()
    presets = ROOT / "configs" / args.preset
    common = [
        f"train.batch_size={args.batch}",
        "train.warmup_steps=0",
        "scaling.num_workers=1",
        f"scaling.use_gpu={str(device.type == 'cuda').lower()}",
        "deepspeed.zero_stage=0",
    ]
    checks = Checks(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"gpu_check: {name}, torch {torch.__version__}, preset {args.preset}, {args.steps} steps x batch {args.batch}"
    )
    for precision in args.precisions:
        sets = [*common, f"deepspeed.precision={precision}"]
        teacher_cfg = load_config(TeacherConfig, presets / "teacher.yaml", sets)
        size = (
            teacher_cfg.model_tile_size() or 32
        )  # a preset that leaves the size to the store: the demo's 32 px
        teacher_cfg = teacher_cfg.sized_for_store(size)
        store = StoreMetadata(tile_size=size, sar_channels=1, sar_normalization=SarNormalization())
        with tempfile.TemporaryDirectory(prefix="s2o-gpu-check-") as tmp:
            teacher_bundle, student_bundle, gan_bundle = f"{tmp}/teacher", f"{tmp}/student", f"{tmp}/gan"

            def teacher():
                runtime, summary = train_steps(
                    "teacher", teacher_cfg, store, {}, device, args.steps, args.batch
                )
                runtime.stage.export(
                    teacher_bundle, runtime.ema, teacher_cfg, store, {"trained_steps": args.steps}
                )
                return summary

            if checks.run(f"{precision} train teacher ({size} px)", teacher) is None:
                continue
            for label, extra_sets in (("acd", []), ("ablation", ["distill.adversarial=false"])):
                cfg = load_config(DistillConfig, presets / "distill.yaml", [*sets, *extra_sets])

                def distill(cfg=cfg, label=label):
                    runtime, summary = train_steps(
                        "distill", cfg, store, {"teacher": teacher_bundle}, device, args.steps, args.batch
                    )
                    if label == "acd":
                        runtime.stage.export(
                            student_bundle,
                            runtime.ema,
                            cfg,
                            store,
                            {"trained_steps": args.steps},
                            runtime.models.export_context,
                        )
                    return summary

                checks.run(f"{precision} train distill {label}", distill)
            gan_cfg = load_config(GanConfig, presets / "gan.yaml", sets).sized_for_store(size)

            def gan():
                runtime, summary = train_steps("gan", gan_cfg, store, {}, device, args.steps, args.batch)
                runtime.stage.export(gan_bundle, runtime.ema, gan_cfg, store, {"trained_steps": args.steps})
                return summary

            checks.run(f"{precision} train gan", gan)
            sar = np.random.default_rng(0).uniform(-1, 1, (args.batch, 1, size, size)).astype(np.float32)
            samplings = [
                (teacher_bundle, "ddim", [50]),
                (student_bundle, "lcm", [1, 2, 4, 8]),
                (gan_bundle, "direct", [1]),
            ]
            for bundle, sampler, step_counts in samplings:
                if not Path(bundle).exists():
                    continue
                holder: dict[str, LoadedModel] = {}

                def load(bundle=bundle, sampler=sampler, holder=holder):
                    holder["model"] = LoadedModel(
                        bundle, device=device.type, dtype=precision, sampler=sampler
                    )
                    return f"{holder['model'].dtype_name} on {holder['model'].device}"

                if checks.run(f"{precision} LoadedModel {Path(bundle).name}", load) is None:
                    continue
                loaded = holder["model"]
                for n in step_counts:

                    def sample(loaded=loaded, n=n):
                        out = loaded.translate(sar, "check", steps=n)
                        if not np.isfinite(out).all():
                            raise RuntimeError("non-finite output")
                        return f"{sampler} {n} step(s): {out.shape[0]} tiles, output range [{out.min():.2f}, {out.max():.2f}]"

                    checks.run(f"{precision} sample {Path(bundle).name} {sampler}:{n}", sample)
            if args.compile != "off" and Path(student_bundle).exists():

                def compiled_latency(precision=precision):
                    return student_latency(
                        student_bundle, device, precision, args.compile, sar[:1], args.latency_repeats
                    )

                checks.run(f"{precision} compiled ({args.compile}) student 1 step batch 1", compiled_latency)
    failed = [row for row in checks.rows if not row[1]]
    print(f"\ngpu_check: {len(checks.rows) - len(failed)}/{len(checks.rows)} checks passed on {name}")
    for row in failed:
        print(f"  FAILED {row[0]}: {row[4]}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
