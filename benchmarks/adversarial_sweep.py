"""Does the adversarial term help? Distil from a teacher trained past the demo's budget, with and without it.

    python benchmarks/adversarial_sweep.py --out runs/sweep [--teacher-steps 1500] [--distill-steps 200]
        [--lambdas 0.1,0.5,1.0] [--variant NAME:KEY=VALUE[,KEY=VALUE...]]... [--report report] [--limit 192]

Through the real CLI, on one local Ray cluster per command: a synthetic store (2048 pairs of 32 px),
the tiny teacher for --teacher-steps, then from that one teacher an ACD student per lambda_adv and the
no-adversarial ablation, all with configs/tiny/distill.yaml and the same --distill-steps, then one
`s2o eval` of every student at 1, 2 and 4 steps against the teacher's DDIM-50 on the same test tiles and
seeds (paired PSNR differences with bootstrap intervals, sharpness, land cover). --variant adds a student
with other distillation settings (what the method leaves open: the discriminator's "real", its learning
rate, its loss), e.g. --variant real-target:distill.real=target --variant dlr-1e-3:distill.discriminator_lr=1e-3
(at the first of --lambdas unless the variant sets distill.lambda_adv). Every stage is reused
when its output exists, so an interrupted sweep resumes. The table in docs/MEASUREMENTS.md ("The adversarial term, measured") comes from report.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
S2O = [sys.executable, "-m", "s2o_platform.cli"]


def run(args: list[str], done: Path) -> None:
    if done.exists():
        print(f"[sweep] reusing {done}", flush=True)
        return
    print(f"[sweep] {' '.join(args)}", flush=True)
    began = time.perf_counter()
    subprocess.run(S2O + args, check=True, cwd=REPO)
    print(f"[sweep] done in {time.perf_counter() - began:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--lambdas", default="0.1,0.5,1.0")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE...]: another ACD student with these --set keys (repeatable)",
    )
    parser.add_argument("--report", default="report", help="the evaluation's folder under --out")
    parser.add_argument("--limit", type=int, default=192, help="test tiles to score")
    args = parser.parse_args()
    out = args.out.resolve()
    store, teacher = out / "store", out / "teacher"
    run(["data", "synth", "--out", str(store), "--pairs", "2048", "--size", "32"], store / "_s2o_store.json")
    run(
        [
            "train",
            "teacher",
            "--config",
            "configs/tiny/teacher.yaml",
            "--data",
            str(store),
            "--out",
            str(teacher),
            "--set",
            f"train.max_steps={args.teacher_steps}",
            "--set",
            f"checkpoint.every_steps={args.teacher_steps}",
        ],
        teacher / "bundle" / "s2o_bundle.json",
    )
    students = {f"acd-{lam}": ["--set", f"distill.lambda_adv={lam}"] for lam in args.lambdas.split(",")}
    students["ablation"] = ["--set", "distill.adversarial=false"]
    first_lambda = args.lambdas.split(",")[0]
    for variant in args.variant:
        name, _, keys = variant.partition(":")
        if not name or "=" not in keys:
            parser.error(f"--variant {variant!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
        pairs = keys.split(",")
        if not any(pair.startswith("distill.lambda_adv=") for pair in pairs):
            pairs.insert(0, f"distill.lambda_adv={first_lambda}")
        students[name] = [arg for pair in pairs for arg in ("--set", pair)]
    for name, extra in students.items():
        run(
            [
                "train",
                "distill",
                "--config",
                "configs/tiny/distill.yaml",
                "--teacher",
                str(teacher / "bundle"),
                "--data",
                str(store),
                "--out",
                str(out / name),
                "--set",
                f"train.max_steps={args.distill_steps}",
                "--set",
                f"checkpoint.every_steps={args.distill_steps}",
                *extra,
            ],
            out / name / "bundle" / "s2o_bundle.json",
        )
    models = ["--model", f"teacher={teacher / 'bundle'}@ddim:50"]
    for name in students:
        models += ["--model", f"{name}={out / name / 'bundle'}@lcm:1,2,4"]
    report = out / args.report
    run(
        [
            "eval",
            "--data",
            str(store),
            "--out",
            str(report),
            "--limit",
            str(args.limit),
            "--repeats",
            "1",
            "--no-speed-references",
            *models,
        ],
        report / "report.md",
    )
    print((report / "report.md").read_text())


if __name__ == "__main__":
    main()
