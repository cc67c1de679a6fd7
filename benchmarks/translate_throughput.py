"""Archive translation: end-to-end tiles/s against the bare model, and peak memory of a small vs a large scene.

    python benchmarks/translate_throughput.py [--model BUNDLE] [--size 1024] [--large 4096] [--batch-size 32]
                                              [--dtype auto] [--compile off|default|max]

1. Throughput, one run, same tiles, same batch size: the bare model (`translate_tiles` in this
   process over the scene's own tiles, read into memory beforehand; timed before and after the
   pipeline, mean of both, as this machine drifts) against `s2o translate` on the scene (read,
   normalise, infer in a Ray Data actor, blend, write the COG): from its first translated tile to the
   COG written (the steady state a long archive runs in), and the whole run, start-up included.
   The bare model runs at the thread count of the translate actor (on the driver's node, one core is
   kept for the driver) and at all cores. Target: first tile to COG >= 0.8 of the bare model at the
   actor's threads, on CPU with the tiny student. Both run in
   --dtype (resolved as `s2o translate` resolves it: bf16 on a CPU that has it). With --compile other
   than off, the same is measured twice, eager and compiled (the bare model compiled and warmed up
   at its shapes before it is timed; `s2o translate --compile` compiling in its actor inside the timed
   run, as a user's run would): each pipeline against the bare model of its own kind.
2. Memory: `s2o translate` of a --size and a --large scene with the pix2pix bundle (fast), peak of
   the memory the driver allocates (tracemalloc: numpy buffers included) while it mosaics and
   writes; the model actors hold one batch at a time whatever the scene size.
Without --model, freshly initialised tiny-preset bundles are used (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from s2o_platform.bundle import load_bundle, read_bundle_metadata  # noqa: E402
from s2o_platform.data.normalization import SarNormalization  # noqa: E402
from s2o_platform.data.scene import inspect_scene, read_strip  # noqa: E402
from s2o_platform.data.store import StoreMetadata  # noqa: E402
from s2o_platform.data.synth_writer import write_scene_geotiffs  # noqa: E402
from s2o_platform.devices import cpu_threads, resolve_dtype  # noqa: E402
from s2o_platform.inference import resolve_sampler, translate_tiles  # noqa: E402
from s2o_platform.inference_compile import compile_bundle, resolve_compile  # noqa: E402
from s2o_platform.train.untrained import write_untrained_bundles  # noqa: E402
from s2o_platform.translate.pipeline import TranslateRun, run_translate  # noqa: E402


def bare_model(
    bundle_path: str,
    tiles: np.ndarray,
    batch_size: int,
    steps: int | None,
    dtype: str = "auto",
    compile_choice: str = "off",
    threads: int | None = None,
) -> float:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = torch.device("cpu")
    bundle = load_bundle(bundle_path, dtype=resolve_dtype(dtype, device))
    # compiled: every shape this run uses (full batches and the last, partial one) compiled before timing
    compile_bundle(
        bundle,
        resolve_compile(compile_choice, device),
        max_batch=batch_size,
        warm_batches=[batch_size, len(tiles) % batch_size or batch_size],
    )
    translate_tiles(bundle, tiles[:batch_size], steps=steps, batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    translate_tiles(bundle, tiles, steps=steps, batch_size=batch_size)
    return len(tiles) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="student bundle (default: an untrained tiny student)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--large", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="student steps (default: the bundle's)")
    parser.add_argument("--dtype", default="auto", help="precision of the bare model and of s2o translate")
    parser.add_argument(
        "--compile",
        default="off",
        choices=["off", "default", "max"],
        help="also measure compiled (the bare model and s2o translate --compile)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip part 2 (the driver's memory)")
    args = parser.parse_args()

    from s2o_platform.ray_cluster import connect

    print(f"cluster: {connect()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="s2o-tr-bench-") as tmp:
        tmp = Path(tmp)
        store = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
        untrained = write_untrained_bundles(ROOT / "configs" / "tiny", tmp / "bundles", store)
        model = args.model or untrained["student"]
        metadata = read_bundle_metadata(model)
        tile = metadata.tile_size
        small = Path(write_scene_geotiffs(str(tmp / "small"), 1, args.size, seed=0)[0]).parent
        scene = next(small.glob("*.tif"))
        info = inspect_scene(str(scene), "s", None, "auto", tile, tile // 4, metadata.sar_normalization)
        tiles = np.concatenate([read_strip(info, r)[0] for r in info.row_starts])
        steps = resolve_sampler(load_bundle(model), None, args.steps)[1]
        print(
            f"scene {args.size}x{args.size}: {len(tiles)} tiles of {tile} px (overlap {tile // 4}), batch {args.batch_size}, "
            f"{steps} step(s), {os.cpu_count()} cores",
            flush=True,
        )

        # `s2o translate`'s model actor on this (the driver's) node keeps a core for the driver (devices.cpu_threads)
        actor_threads = cpu_threads(None, 1, reserve=1)
        results = {}
        for kind in ["off"] + ([args.compile] if args.compile != "off" else []):
            name = "eager" if kind == "off" else f"compiled ({kind})"
            bare = {t: [] for t in dict.fromkeys([actor_threads, os.cpu_count() or 1])}
            for t in bare:
                bare[t].append(bare_model(model, tiles, args.batch_size, args.steps, args.dtype, kind, t))
            summary = run_translate(
                TranslateRun(
                    source=str(small),
                    model=model,
                    dest=str(tmp / f"out-{kind}"),
                    steps=args.steps,
                    batch_size=args.batch_size,
                    dtype=args.dtype,
                    compile=kind,
                    progress=False,
                ),
                log=lambda m: None,
            )
            assert not summary.failed, summary.failed
            for t in bare:
                bare[t].append(bare_model(model, tiles, args.batch_size, args.steps, args.dtype, kind, t))
            whole, stream = summary.tiles / summary.seconds, summary.tiles / summary.stream_seconds
            mean = {t: sum(v) / len(v) for t, v in bare.items()}
            for t, v in bare.items():
                print(
                    f"[{name}] bare model, {t} thread(s) (before / after): {v[0]:7.1f} / {v[1]:7.1f} tiles/s",
                    flush=True,
                )
            print(
                f"[{name}] s2o translate, whole run:       {whole:7.1f} tiles/s  ({summary.seconds:.1f} s: Ray Data start-up, the "
                f"model actor's start and load{', its compiles' if kind != 'off' else ''} included)",
                flush=True,
            )
            print(
                f"[{name}] s2o translate, first tile to COG: {stream:7.1f} tiles/s  ({summary.stream_seconds:.1f} s)",
                flush=True,
            )
            ratio = stream / mean[actor_threads]
            print(
                f"[{name}] ratio pipeline (first tile to COG) / bare model at the actor's {actor_threads} thread(s): "
                f"{ratio:.3f}  (target >= 0.8)",
                flush=True,
            )
            for t, m in mean.items():
                print(
                    f"[{name}]   whole run / bare at {t} thread(s): {whole / m:.3f}; first tile to COG / bare at "
                    f"{t} thread(s): {stream / m:.3f}",
                    flush=True,
                )
            results[name] = (stream, mean[actor_threads])
        if len(results) > 1:
            (e_pipe, e_bare), (c_pipe, c_bare) = results.values()
            print(
                f"compiled against eager: bare model {c_bare / e_bare:.2f}x, s2o translate {c_pipe / e_pipe:.2f}x"
            )
        if args.no_memory:
            return

        large = Path(write_scene_geotiffs(str(tmp / "large"), 1, args.large, seed=0)[0]).parent
        memory = {}
        for label, folder in (("small", small), ("large", large)):
            tracemalloc.start()
            started = time.perf_counter()
            result = run_translate(
                TranslateRun(
                    source=str(folder),
                    model=untrained["gan"],
                    dest=str(tmp / f"mem-{label}"),
                    batch_size=256,
                    progress=False,
                ),
                log=lambda m: None,
            )
            assert not result.failed, result.failed
            memory[label] = (
                tracemalloc.get_traced_memory()[1] / 2**20,
                time.perf_counter() - started,
                result.tiles,
            )
            tracemalloc.stop()
        (s_mb, s_t, s_n), (l_mb, l_t, l_n) = memory["small"], memory["large"]
        print(
            f"driver peak allocations: {args.size}^2 scene {s_mb:6.1f} MB ({s_n} tiles, {s_t:.0f} s); "
            f"{args.large}^2 scene {l_mb:6.1f} MB ({l_n} tiles, {l_t:.0f} s); ratio {l_mb / s_mb:.2f} for "
            f"{(args.large / args.size) ** 2:.0f}x the pixels"
        )


if __name__ == "__main__":
    main()
