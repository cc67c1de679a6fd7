"""Scaling on a real multi-node Ray cluster: 1 against 2 of each kind of worker, side by side in one run.

    python benchmarks/scaling.py [--rounds 2] [--train-steps 40] [--scene-px 512] [--requests 96] [--json FILE]

On the local three-node cluster of tests/multinode/cluster.py (a head with no CPUs and two worker nodes,
each its own raylet and object store, token auth on, all on loopback):

1. Training (teacher, tiny preset, bf16 autocast, batch 32 per worker): 1 worker against 2 workers on two
   nodes (STRICT_SPREAD, ZeRO-2), every worker with 1 torch thread. samples/s in all and per worker, from
   the run's own history (the first logged window, warm-up, left out).
2. Archive translation (`s2o translate`, the tiny student at 4 steps, bf16): 1 model actor against 2 (Ray
   Data spreads them over the two worker nodes). tiles/s from the first tile to the last COG.
3. Serving (`s2o serve`'s application, the tiny student at 4 steps, bf16): 1 replica against 2 (one per
   node), under 8 closed-loop clients posting 32 px tiles. tiles/s over --requests answers after a warm-up.

Each pair alternates (1, 2, 1, 2, ...) for --rounds rounds; the medians and the ratio 2/1 are printed. The
ideal ratio is 2.0 where each worker has its own cores; this machine's nodes share its cores, so the ratios
show what two workers gain from the same cores and what crossing nodes costs (synchronisation, object
transfer between object stores), not what two machines would give. Weights are untrained: speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.multinode

import numpy as np  # noqa: E402


def measure_training(store: str, out_root: Path, workers: int, steps: int, run: int) -> dict:
    from s2o_platform.config import TeacherConfig, load_config
    from s2o_platform.train.launcher import run_training
    from tests.fixtures import TINY_CONFIGS

    cfg = load_config(
        TeacherConfig,
        TINY_CONFIGS / "teacher.yaml",
        [
            f"scaling.num_workers={workers}",
            "scaling.placement_strategy=STRICT_SPREAD",
            "scaling.torch_threads=1",
            f"deepspeed.zero_stage={2 if workers > 1 else 0}",
            "train.batch_size=32",
            f"train.max_steps={steps}",
            f"train.log_every_steps={steps // 4}",
            f"checkpoint.every_steps={steps}",
        ],
    )
    result = run_training(
        "teacher", cfg, store, str(out_root / f"train-{workers}-{run}"), 32, log=lambda m: None
    )
    rates = [h["samples_per_s"] for h in result.history[1:]]
    total = statistics.median(rates)
    return {"samples_per_s": total, "per_worker": total / workers}


def measure_translation(scenes: Path, bundle: str, out_root: Path, actors: int, run: int) -> dict:
    from s2o_platform.translate.pipeline import TranslateRun, run_translate

    options = TranslateRun(
        source=str(scenes), dest=str(out_root / f"translate-{actors}-{run}"), model=bundle, steps=4,
        actors=actors, dtype="bf16", progress=False,
    )  # fmt: skip
    summary = run_translate(options, log=lambda m: None)
    return {"tiles_per_s": summary.tiles_per_s, "tiles": summary.tiles}


def measure_serving(bundle: str, replicas: int, requests: int) -> dict:
    from ray import serve

    from s2o_platform.serving.runner import DEFAULT_CONFIG, free_port, plan_serving, start_serving
    from tests.fixtures import png_bytes
    from tests.multinode.cluster import wait_for
    from tests.multinode.load import ClosedLoopClients

    plan = plan_serving(DEFAULT_CONFIG, model=bundle, port=free_port(), overrides={"dtype": "bf16"})
    translator = plan.deployment_options["SarTranslator"]
    translator["autoscaling_config"] = {
        **translator["autoscaling_config"],
        "min_replicas": replicas,
        "max_replicas": replicas,
    }
    translator["max_replicas_per_node"] = 1
    url = start_serving(plan)
    body = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    warm = 16
    try:
        with ClosedLoopClients(url, body, clients=8, steps=4) as clients:
            wait_for(lambda: clients.answered >= warm, "warm-up answers", timeout=300)
            start, first = time.perf_counter(), clients.answered
            wait_for(lambda: clients.answered >= first + requests, "measured answers", timeout=600)
            seconds = time.perf_counter() - start
            answered = clients.answered - first
    finally:
        serve.shutdown()
    return {"tiles_per_s": answered / seconds, "lost": len(clients.lost)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--scene-px", type=int, default=512)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from s2o_platform.data.store import read_metadata
    from s2o_platform.data.synth_writer import run_synth, write_scene_geotiffs
    from s2o_platform.train.untrained import write_untrained_bundles
    from tests.fixtures import TINY_CONFIGS
    from tests.multinode.cluster import LocalMultiNodeCluster

    work = Path(tempfile.mkdtemp(prefix="s2o-scaling-"))
    figures: dict[str, dict[int, list[dict]]] = {"training": {}, "translation": {}, "serving": {}}
    with LocalMultiNodeCluster(workers=2) as cluster:
        print(f"cluster: head (0 CPUs) + {len(cluster.workers)} worker nodes x {cluster.worker_cpus} CPUs; "
              f"machine: {os.cpu_count()} cores")  # fmt: skip
        store = str(work / "store")
        run_synth(store, pairs=1024, size=32, seed=1, progress=False)
        bundle = write_untrained_bundles(TINY_CONFIGS, work / "bundles", read_metadata(store))["student"]
        write_scene_geotiffs(str(work / "scenes"), 2, args.scene_px, seed=5)
        for run in range(args.rounds):
            for n in (1, 2):
                figures["training"].setdefault(n, []).append(
                    measure_training(store, work, n, args.train_steps, run)
                )
                figures["translation"].setdefault(n, []).append(
                    measure_translation(work / "scenes" / "sar", bundle, work, n, run)
                )
                figures["serving"].setdefault(n, []).append(measure_serving(bundle, n, args.requests))
                print(f"round {run + 1}, {n} worker(s): " + ", ".join(
                    f"{kind} {figures[kind][n][-1]}" for kind in figures
                ), flush=True)  # fmt: skip

    rows = [
        ("training, samples/s in all", "training", "samples_per_s"),
        ("training, samples/s per worker", "training", "per_worker"),
        ("archive translation, tiles/s", "translation", "tiles_per_s"),
        ("serving, tiles/s", "serving", "tiles_per_s"),
    ]
    result = {}
    print(f"\n{'measure':34s} {'1 worker':>10s} {'2 workers':>10s} {'2 / 1':>7s}")
    for label, kind, key in rows:
        one = statistics.median(r[key] for r in figures[kind][1])
        two = statistics.median(r[key] for r in figures[kind][2])
        result[label] = {"one": round(one, 2), "two": round(two, 2), "ratio": round(two / one, 3)}
        print(f"{label:34s} {one:10.2f} {two:10.2f} {two / one:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "medians": result}, indent=2))


if __name__ == "__main__":
    main()
