"""Online serving under load: dynamic batching on vs off, against the bare model's own batching gain.

    python benchmarks/serve_load.py [--model BUNDLE] [--steps N] [--concurrency 1,8,32]
                                    [--requests 160] [--max-seconds 40] [--max-batch 16] [--compile default] [--json FILE]

Every request is one model tile (a 32 px 8-bit PNG for the tiny preset), so what batching gains
comes from batching across requests. In one run, on one local Ray cluster:

1. The bare model in this process: per-tile throughput at batch 1 and at --max-batch (median of
   repeats, timed before and after the serving runs, mean of both): its batching gain, with all the
   machine's cores as torch threads and with the replica's threads (a CPU replica uses the CPUs it
   reserves, 1 in serve/config.yaml, leaving the other core to the HTTP proxy and the clients).
2. Ray Serve with serve/config.yaml's application, deployed twice with one replica each: batching on
   (max_batch_size = --max-batch) and off (max_batch_size = 1). A closed-loop asyncio load generator
   (aiohttp) at each concurrency sends --requests requests (or stops at --max-seconds): throughput
   and p50/p99 latency, on and off measured back to back at each concurrency.
3. The p50 overhead of the HTTP path (client, proxy, decode, tiling, encode) over a direct
   in-process call of the model on one tile, at concurrency 1.

4. With --compile default (or max): all of the above twice, eager and compiled, for the same config
   (the bare model compiled in this process, the replicas with args.compile; each replica compiles
   every batch size it can meet before it is ready), and compiled against eager side by side. Each
   kind's ratio is judged against the bare model of its own kind.

Target (issue 7): serving's gain from batching at concurrency 32 >= 0.7 of the bare model's gain
(judged against the bare model on the replica's thread count; the ratio against all cores is printed too).
Without --model, a freshly initialised tiny-preset student is used (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s2o_platform.bundle import read_bundle_metadata  # noqa: E402
from s2o_platform.data.normalization import SarNormalization  # noqa: E402
from s2o_platform.data.store import StoreMetadata  # noqa: E402
from s2o_platform.devices import device_name  # noqa: E402
from s2o_platform.inference import LoadedModel  # noqa: E402
from s2o_platform.serving.runner import free_port  # noqa: E402
from s2o_platform.serving.settings import DEFAULT_CONFIG  # noqa: E402
from s2o_platform.train.untrained import write_untrained_bundles  # noqa: E402


def plan_threads(config: Path) -> float:
    """The CPUs a replica reserves in the Serve config (its torch threads on CPU)."""
    from s2o_platform.serving.settings import load_serve_config

    deployment = load_serve_config(config).applications[0].deployments[0]
    options = deployment.ray_actor_options
    return (options.num_cpus if options is not None else None) or 1


def tile_png(size: int, seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def bare_model(
    model: LoadedModel, tile: int, batch: int, steps: int, repeats: int
) -> tuple[float, float, float]:
    """(tiles/s at batch 1, tiles/s at `batch`, p50 ms of one single-tile call)."""
    sar = np.random.default_rng(0).uniform(-1, 1, (batch, 1, tile, tile)).astype(np.float32)
    model.translate(sar, "warm-up", steps=steps)

    def timed(n: int) -> float:
        started = time.perf_counter()
        model.translate(sar[:n], "bench", steps=steps)
        return time.perf_counter() - started

    single = sorted(timed(1) for _ in range(max(repeats * 5, 15)))
    batched = sorted(timed(batch) for _ in range(repeats))
    return 1 / statistics.median(single), batch / statistics.median(batched), 1000 * statistics.median(single)


async def load(url: str, body: bytes, concurrency: int, requests: int, max_seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(session):
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "image/png"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        for _ in range(3):  # warm the connection pool and the replica
            async with session.post(url, data=body, headers={"Content-Type": "image/png"}) as response:
                await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = statuses.get(200, 0)
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "ok": ok,
        "statuses": statuses,
        "seconds": elapsed,
        "tiles_per_s": ok / elapsed,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a bundle (default: an untrained tiny student)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the bundle's)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=160, help="requests per measurement")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="time bound per measurement")
    parser.add_argument(
        "--max-batch", type=int, default=16, help="dynamic batch size, and the bare model's batch"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--compile",
        default="off",
        choices=["off", "default", "max"],
        help="also measure the same config with the model compiled (bare model and replicas)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from ray import serve

    from s2o_platform.inference import resolve_sampler_for
    from s2o_platform.serving.app import application
    from s2o_platform.serving.runner import plan_serving, start_serving
    from s2o_platform.serving.settings import ServeSettings

    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.model
        if bundle is None:
            store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
            bundle = write_untrained_bundles(ROOT / "configs" / "tiny", scratch, store)["student"]
        metadata = read_bundle_metadata(bundle)
        tile = metadata.tile_size
        _, steps = resolve_sampler_for(metadata, bundle, None, args.steps)
        variants = ["off"] + ([args.compile] if args.compile != "off" else [])
        import torch

        all_cores = os.cpu_count() or 1
        replica_threads = int(plan_threads(DEFAULT_CONFIG))
        # one model per forward pass and thread count: inductor generates its CPU kernels for the thread count
        # it compiles at, so the bare model on the replica's threads is compiled at them, as the replica is
        models = {
            (v, t): LoadedModel(
                bundle, device="auto", steps=steps, batch_size=args.max_batch, compile=v, threads=t
            )
            for v in variants
            for t in sorted({all_cores, replica_threads})
        }
        model = models[("off", all_cores)]
        print(
            f"model {bundle} ({metadata.stage}, {tile} px, {steps} steps) on {device_name(model.device)}; forward pass: "
            + ", ".join(f"{label(v)} = {models[(v, all_cores)].compile_plan.describe()}" for v in variants),
            flush=True,
        )

        def bare_both(v):
            out = {}
            for threads in sorted({all_cores, replica_threads}):
                torch.set_num_threads(threads)
                out[threads] = bare_model(models[(v, threads)], tile, args.max_batch, steps, args.repeats)
            return out

        before = {v: bare_both(v) for v in variants}

        # passes never exceed max_batch tiles here (one-tile requests, max_batch_size requests per pass): a replica's
        # model batch is set to it, so a compiled replica compiles the buckets it can meet (1, 2, 4, ... max_batch)
        plan = plan_serving(
            DEFAULT_CONFIG,
            model=bundle,
            port=free_port(),
            overrides={"steps": steps, "model_batch_tiles": args.max_batch},
        )
        url = start_serving(plan)
        if (
            len(variants) > 1
        ):  # the config's own app holds a CPU the four measured replicas need (4 logical CPUs)
            serve.delete(plan.app_name)
        one_replica = {
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "max_ongoing_requests": max(levels) * 2,
            "max_queued_requests": max(levels) * 8,
        }
        for v in variants:
            for name, batch in (("on", args.max_batch), ("off", 1)):
                settings = ServeSettings(
                    **{**plan.settings.model_dump(), "max_batch_size": batch, "compile": v}
                )
                options = {
                    **plan.deployment_options,
                    "SarTranslator": {**plan.deployment_options["SarTranslator"], **one_replica},
                }
                started = time.perf_counter()
                serve.run(
                    application(settings, options),
                    name=app_name(name, v),
                    route_prefix=f"/{app_name(name, v)}",
                )
                print(f"  deployed {app_name(name, v)} in {time.perf_counter() - started:.0f} s", flush=True)
        body = tile_png(tile, 1)
        rows = []
        for concurrency in levels:
            for v in variants:
                for name in ("off", "on"):
                    result = asyncio.run(
                        load(
                            f"{url}/{app_name(name, v)}/v1/translate",
                            body,
                            concurrency,
                            args.requests,
                            args.max_seconds,
                        )
                    )
                    result["batching"], result["forward"] = name, label(v)
                    rows.append(result)
                    print(
                        f"  {label(v)}, batching {name:3s} concurrency {concurrency:2d}: {result['tiles_per_s']:6.1f} tiles/s, "
                        f"p50 {result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms, statuses {result['statuses']}",
                        flush=True,
                    )
        serve.shutdown()
        after = {v: bare_both(v) for v in variants}

    by = {(r["forward"], r["batching"], r["concurrency"]): r for r in rows}
    top = max(levels)
    print()
    print("| forward pass | batching | concurrency | tiles/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['forward']} | {r['batching']} | {r['concurrency']} | {r['tiles_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    summary = {}
    for v in variants:
        name = label(v)
        bare = {t: tuple(statistics.mean(pair) for pair in zip(before[v][t], after[v][t])) for t in before[v]}
        b1, bmax, direct_ms = bare[replica_threads]
        bare_gain = bmax / b1
        serve_gain = by[(name, "on", top)]["tiles_per_s"] / by[(name, "off", top)]["tiles_per_s"]
        http_p50 = by[(name, "on", min(levels))]["p50_ms"]
        ratio = serve_gain / bare_gain
        print()
        print(f"[{name}]")
        for t, (one, many, _) in sorted(bare.items()):
            print(
                f"bare model, {t} torch thread(s): {one:.1f} tiles/s at batch 1 ({before[v][t][0]:.1f} before / "
                f"{after[v][t][0]:.1f} after), {many:.1f} at batch {args.max_batch} ({before[v][t][1]:.1f} / "
                f"{after[v][t][1]:.1f}): batching gain {many / one:.2f}x"
            )
        print(
            f"serving ({replica_threads} torch thread(s) per replica): batching gain at concurrency {top} {serve_gain:.2f}x"
        )
        print(
            f"HTTP path p50 overhead at concurrency {min(levels)}: {http_p50:.1f} ms over a direct call's {direct_ms:.1f} ms "
            f"(+{http_p50 - direct_ms:.1f} ms)"
        )
        print(f"ratio serving gain / bare gain on the replica's threads: {ratio:.2f} (target >= 0.7)")
        if all_cores != replica_threads:
            one, many, _ = bare[all_cores]
            print(f"ratio serving gain / bare gain on all {all_cores} cores: {serve_gain / (many / one):.2f}")
        summary[name] = {
            "bare_batch1_tiles_per_s": b1,
            "bare_batch_tiles_per_s": bmax,
            "bare_gain": bare_gain,
            "serve_gain": serve_gain,
            "ratio": ratio,
            "direct_p50_ms": direct_ms,
            "http_p50_ms": http_p50,
            "bare_by_threads": {str(t): x for t, x in bare.items()},
        }
    if len(variants) > 1:
        eager, compiled = label(variants[0]), label(variants[1])
        print()
        print(
            f"{compiled} against {eager}, same config: bare model on the replica's threads "
            f"{summary[compiled]['bare_batch_tiles_per_s'] / summary[eager]['bare_batch_tiles_per_s']:.2f}x at batch "
            f"{args.max_batch}, {summary[compiled]['bare_batch1_tiles_per_s'] / summary[eager]['bare_batch1_tiles_per_s']:.2f}x "
            "at batch 1; serving: "
            + ", ".join(
                f"{b} c{c} {by[(compiled, b, c)]['tiles_per_s'] / by[(eager, b, c)]['tiles_per_s']:.2f}x"
                for c in levels
                for b in ("off", "on")
            )
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    **summary[label("off")],
                    "by_forward_pass": summary,
                    "device": device_name(model.device),
                },
                indent=2,
            )
        )


def label(choice: str) -> str:
    return "eager" if choice == "off" else f"compiled ({choice})"


def app_name(batching: str, choice: str) -> str:
    return f"batching-{batching}" + ("" if choice == "off" else "-compiled")


if __name__ == "__main__":
    main()
