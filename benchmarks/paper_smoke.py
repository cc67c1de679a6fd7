"""The paper scale, end to end through the real CLI: 256 px SEN1-2 pairs, the configs/paper/ networks, bf16.

    python benchmarks/paper_smoke.py                      # on a CPU with bf16 (AVX512-BF16/AMX), or a GPU
    python benchmarks/paper_smoke.py --out /tmp/smoke --steps 2 --real ../shared/data/real

Runs, each as its own `s2o` command (each starts its own local Ray cluster, as a user's would):
  1. s2o data ingest      the real SEN1-2 pairs at 256 px
  2. s2o train teacher    configs/paper/teacher.yaml (~114 M parameters), --steps optimizer steps, bf16
  3. s2o train distill    configs/paper/distill.yaml from that teacher (ACD: student, EMA target, frozen
                          teacher, discriminator), bf16
  4. s2o train gan        configs/paper/gan.yaml (pix2pix at 256 px), bf16
  5. s2o eval             the student at 1 step in bf16 on 2 test tiles
  6. s2o translate        a real Sentinel-1 GeoTIFF with the student (1 step, bf16) into a COG
  7. s2o serve            one HTTP request (a real 256 px SAR PNG) to the student in bf16
The presets run as published except what a one-machine smoke test must change, said by the --set
flags printed per stage: one CPU worker, micro-batch 1, no warm-up, a checkpoint at the last step.
Prints each stage's wall time and peak memory (the largest summed RSS of the command's process tree,
Ray's workers included, sampled every 0.5 s: shared library pages count once per process, so it is
an upper bound), and exits 1 on the first failure with the command's output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
S2O = [sys.executable, "-m", "s2o_platform.cli"]
SMOKE_SETS = [
    "scaling.num_workers=1",
    "scaling.use_gpu={gpu}",
    "scaling.cpus_per_worker=1",
    "train.batch_size=1",
    "train.warmup_steps=0",
    "train.log_every_steps=1",
    "deepspeed.precision=bf16",
]


class TreeMemory:
    """Peak summed RSS of a process and all its descendants, sampled on a thread."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                total = 0
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self.done.wait(self.every_s)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def run_stage(name: str, args: list[str], log_dir: Path, results: list[dict]) -> None:
    print(f"[smoke] {name}: s2o {' '.join(args)}", flush=True)
    log_path = log_dir / f"{name.replace(' ', '_')}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*S2O, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        memory = TreeMemory(proc.pid)
        rc = proc.wait()
    peak = memory.stop()
    seconds = time.perf_counter() - started
    results.append(
        {"stage": name, "seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2), "rc": rc}
    )
    print(f"[smoke] {name}: rc {rc}, {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB", flush=True)
    if rc != 0:
        print(log_path.read_text()[-6000:], file=sys.stderr)
        raise SystemExit(f"[smoke] {name} failed (rc {rc}); log: {log_path}")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process, every descendant it still has and its process group (what left it for init)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def serve_once(bundle: str, sar_png: Path, port: int, log_dir: Path, results: list[dict]) -> None:
    """Start `s2o serve`, wait until /healthz says ready, send one request, stop it with SIGTERM (Ctrl-C's path;
    SIGINT itself is ignored by a command started in the background of a non-interactive shell, as CI jobs are)."""
    name = "serve"
    args = ["serve", "--model", bundle, "--port", str(port), "--dtype", "bf16"]
    print(f"[smoke] {name}: s2o {' '.join(args)} + one POST /v1/translate", flush=True)
    log_path = log_dir / "serve.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # its own process group, so that a serve that hangs is killed whole, its Ray cluster's processes too
        proc = subprocess.Popen(
            [*S2O, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        memory = TreeMemory(proc.pid)
        killed = False
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 900
            while True:  # the replica is ready only after its warm-up forward pass
                if proc.poll() is not None:
                    raise SystemExit(
                        f"[smoke] s2o serve exited with {proc.returncode} before it was ready; log: {log_path}"
                    )
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                        if json.loads(response.read()).get("status") == "ready":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"[smoke] s2o serve not ready after 900 s; log: {log_path}")
                time.sleep(1)
            ready = time.perf_counter() - started
            request = urllib.request.Request(
                f"{url}/v1/translate?steps=1",
                data=sar_png.read_bytes(),
                headers={"Content-Type": "image/png"},
                method="POST",
            )
            sent = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                body, status = response.read(), response.status
            latency = time.perf_counter() - sent
            if status != 200 or not body.startswith(b"\x89PNG"):
                raise SystemExit(f"[smoke] the request answered {status} with {body[:80]!r}")
            with urllib.request.urlopen(f"{url}/v1/model", timeout=30) as response:
                dtype = json.loads(response.read()).get("dtype")
            if dtype != "bf16":
                raise SystemExit(f"[smoke] the replica runs {dtype}, not bf16")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                killed = True
                kill_tree(proc)
    peak = memory.stop()
    if killed or proc.returncode != 0:  # a serve that does not stop cleanly on SIGTERM fails the stage too
        why = "did not stop within 120 s of SIGTERM" if killed else f"exited {proc.returncode} on SIGTERM"
        raise SystemExit(f"[smoke] s2o serve {why}; log: {log_path}")
    seconds = time.perf_counter() - started
    results.append(
        {
            "stage": name,
            "seconds": round(seconds, 1),
            "ready_s": round(ready, 1),
            "request_s": round(latency, 2),
            "peak_rss_gib": round(peak / 2**30, 2),
            "rc": 0,
        }
    )
    print(
        f"[smoke] {name}: ready after {ready:.1f} s, one 256 px request {latency:.2f} s, peak RSS {peak / 2**30:.2f} GiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument(
        "--real",
        default=os.environ.get("S2O_SHARED_DATA", str(ROOT.parent / "shared" / "data" / "real")),
        help="the real SEN1-2 sample (sar/ and optical/ 256 px PNGs) and GeoTIFFs",
    )
    parser.add_argument(
        "--scene", default=None, help="Sentinel-1 GeoTIFF to translate (default: one under REAL/geotiff)"
    )
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per training stage")
    parser.add_argument("--port", type=int, default=0, help="port of `s2o serve` (0: a free one)")
    parser.add_argument("--gpu", action="store_true", help="train on a GPU worker (scaling.use_gpu=true)")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster for ingest, training and translation (default: each command starts its own local "
        "one, as a user's would; the test suite passes its shared cluster, which saves a start-up per stage). "
        "Eval runs without Ray and serve always on its own cluster.",
    )
    args = parser.parse_args()

    real = Path(args.real)
    # A real Sentinel-1 GRD VV scene at least one 256 px tile in size (SSL4EO-S12, 264 x 264 px, float32).
    scene = (
        Path(args.scene)
        if args.scene
        else next(
            iter(sorted((real / "geotiff" / "ssl4eo_s12_0000200" / "s1").glob("*/VV.tif"))),
            real / "missing VV.tif",
        )
    )
    for needed in (real / "sar", real / "optical", scene):
        if not needed.exists():
            raise SystemExit(
                f"[smoke] {needed} is missing: pass --real (a folder with sar/ and optical/ SEN1-2 PNGs) and --scene"
            )
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="s2o-paper-smoke-"))
    if work.exists() and args.out:
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    paper = ROOT / "configs" / "paper"
    sets = [f"--set={s.format(gpu=str(args.gpu).lower())}" for s in SMOKE_SETS]
    steps = [f"--set=train.max_steps={args.steps}", f"--set=checkpoint.every_steps={args.steps}"]
    on = ["--address", args.address] if args.address else []
    store, results = str(work / "store"), []
    started = time.perf_counter()
    try:
        run_stage(
            "ingest",
            [
                "data",
                "ingest",
                str(real),
                "--out",
                store,
                "--tile-size",
                "256",
                "--test-fraction",
                "0.5",
                "--val-fraction",
                "0",
                *on,
            ],
            logs,
            results,
        )
        run_stage(
            "train teacher",
            [
                "train",
                "teacher",
                "--config",
                str(paper / "teacher.yaml"),
                "--data",
                store,
                "--out",
                str(work / "teacher"),
                *sets,
                *steps,
                *on,
            ],
            logs,
            results,
        )
        teacher = str(work / "teacher" / "bundle")
        run_stage(
            "train distill",
            [
                "train",
                "distill",
                "--config",
                str(paper / "distill.yaml"),
                "--data",
                store,
                "--teacher",
                teacher,
                "--out",
                str(work / "distill"),
                *sets,
                *steps,
                *on,
            ],
            logs,
            results,
        )
        student = str(work / "distill" / "bundle")
        run_stage(
            "train gan",
            [
                "train",
                "gan",
                "--config",
                str(paper / "gan.yaml"),
                "--data",
                store,
                "--out",
                str(work / "gan"),
                *sets,
                *steps,
                *on,
            ],
            logs,
            results,
        )
        run_stage(
            "eval",
            [
                "eval",
                "--data",
                store,
                "--model",
                f"acd={student}@lcm:1",
                "--out",
                str(work / "eval"),
                "--limit",
                "2",
                "--batch-size",
                "2",
                "--dtype",
                "bf16",
                "--repeats",
                "1",
            ],
            logs,
            results,
        )
        run_stage(
            "translate",
            [
                "translate",
                str(scene),
                "--model",
                student,
                "--out",
                str(work / "translated"),
                "--steps",
                "1",
                "--dtype",
                "bf16",
                "--batch-size",
                "4",
                "--no-progress",
                *on,
            ],
            logs,
            results,
        )
        from s2o_platform.serving.runner import free_port

        serve_once(student, sorted((real / "sar").glob("*.png"))[0], args.port or free_port(), logs, results)
    finally:
        total = time.perf_counter() - started
        print(
            f"\n[smoke] paper-scale smoke on {os.cpu_count()} CPU cores{' + GPU' if args.gpu else ''}: {total:.0f} s in all"
        )
        print("| stage | wall s | peak RSS GiB |")
        print("| --- | ---: | ---: |")
        for r in results:
            print(f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
        (work / "smoke.json").write_text(
            json.dumps({"results": results, "total_s": round(total, 1)}, indent=2)
        )
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
