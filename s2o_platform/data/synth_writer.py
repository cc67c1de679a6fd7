"""`s2o data synth`: write the procedural benchmark set as a tile store (on Ray Data) and, optionally,
a few large georeferenced SAR/optical GeoTIFF scenes for the archive tools.

Scenes are `TILES_PER_SIDE` x `TILES_PER_SIDE` tiles; scene k is generated from the seed sequence
(seed, k), so the set is the same whichever worker makes which scene. Splits are by scene.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from s2o_platform import storage
from s2o_platform.data import synth
from s2o_platform.data.ingest import ensure_store_metadata, existing_tiles, shard_rows_for
from s2o_platform.data.normalization import SarNormalization, SarScale
from s2o_platform.data.ray_context import scoped_data_context
from s2o_platform.data.splits import SPLITS, assign_splits
from s2o_platform.data.store import StoreMetadata, read_metadata, tile_row, write_metadata, write_shards
from s2o_platform.errors import SettingsError
from s2o_platform.geo.tiling import grid_windows, window_transform

TILES_PER_SIDE = 4
#: Synthetic scenes sit on a UTM grid at 10 m, one scene every 100 km (so they never overlap).
SYNTH_CRS = "EPSG:32631"
PIXEL_SIZE_M = 10.0


@dataclass
class SynthSummary:
    tiles: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    scenes: int = 0
    baselines: dict[str, float] = field(default_factory=dict)
    scene_files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def scene_transform(scene_index: int) -> tuple[float, float, float, float, float, float]:
    x0 = 500_000.0 + 100_000.0 * (scene_index % 20)
    y0 = 5_000_000.0 - 100_000.0 * (scene_index // 20)
    return (PIXEL_SIZE_M, 0.0, x0, 0.0, -PIXEL_SIZE_M, y0)


def scene_tiles(scene_index: int, n_tiles: int, size: int, seed: int, split: str, norm: SarNormalization):
    """Rows and per-tile baseline statistics of one synthetic scene."""
    rng = np.random.default_rng([seed, scene_index])
    side = TILES_PER_SIDE * size
    # Land-cover patches about half a tile across: boundaries in most tiles, yet classes readable from the SAR.
    scene = synth.make_scene(rng, side, side, scale=size / 2)
    transform = scene_transform(scene_index)
    rows, stats = [], []
    for window in grid_windows(side, side, size)[:n_tiles]:
        rs = slice(window.row_off, window.row_off + size)
        cs = slice(window.col_off, window.col_off + size)
        optical = scene.optical[rs, cs]
        rows.append(
            tile_row(
                norm.to_model(scene.sar_db[rs, cs], SarScale.DB),
                optical,
                scene_id=f"synth_{seed}_{scene_index:05d}",
                split=split,
                sar_scale=SarScale.DB.value,
                row_off=window.row_off,
                col_off=window.col_off,
                crs=SYNTH_CRS,
                transform=window_transform(transform, window),
                sar_path=f"synth://seed={seed}/scene={scene_index}",
                optical_path=f"synth://seed={seed}/scene={scene_index}",
                source_kind="synth",
                landcover=scene.classes[rs, cs],
            )
        )
        stats.append(synth.tile_statistics(optical, scene.classes[rs, cs]))
    return rows, stats


def synth_batch(
    batch,
    out: str,
    size: int,
    seed: int,
    metadata: dict,
    options: dict,
    max_rows_per_shard: int,
    known_ids_ref=None,
):
    """Ray Data UDF: make, tile and write the scenes of the batch; return counts and statistics.

    Tiles already in the store (known_ids_ref) are not written again, so a repeated run adds nothing.
    """
    import ray

    known_ids = ray.get(known_ids_ref) if known_ids_ref is not None else set()
    meta = StoreMetadata.from_dict(metadata)
    storage_options = storage.StorageOptions(**options)
    result: dict[str, list] = {"split": [], "tiles": [], "stats": []}
    buffer: list[dict] = []
    for index, n_tiles, split in zip(batch["scene"], batch["n_tiles"], batch["split"]):
        rows, stats = scene_tiles(int(index), int(n_tiles), size, seed, str(split), meta.sar_normalization)
        buffer += [r for r in rows if r["tile_id"] not in known_ids]
        if len(buffer) >= max_rows_per_shard:  # bounded memory: flush full shards as we go
            write_shards(out, buffer, meta, max_rows_per_shard, storage_options)
            buffer = []
        result["split"].append(str(split))
        result["tiles"].append(len(rows))
        result["stats"].append(np.stack(stats).tobytes())
    if buffer:
        write_shards(out, buffer, meta, max_rows_per_shard, storage_options)
    return result


def run_synth(
    out: str,
    pairs: int = 2048,
    size: int = 32,
    seed: int = 0,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    clip_db: tuple[float, float] = (-25.0, 0.0),
    scenes_dir: str | None = None,
    n_scene_files: int = 3,
    scene_size: int = 512,
    options: storage.StorageOptions | None = None,
    progress: bool = True,
) -> SynthSummary:
    """Write `pairs` synthetic tiles of `size` px into the store at `out` (ray.init must have run)."""
    import ray
    import ray.data
    from tqdm import tqdm

    if pairs < 1 or size < 8:
        raise SettingsError(f"--pairs must be >= 1 and --size >= 8, got pairs={pairs}, size={size}")
    options = options or storage.StorageOptions.from_env()
    started = time.perf_counter()
    per_scene = TILES_PER_SIDE**2
    n_scenes = math.ceil(pairs / per_scene)
    scene_ids = [f"synth_{seed}_{k:05d}" for k in range(n_scenes)]
    wanted = StoreMetadata(
        tile_size=size, sar_channels=1, sar_normalization=SarNormalization(clip_db=tuple(clip_db))
    )
    metadata = ensure_store_metadata(out, wanted, options)
    splits = assign_splits(scene_ids, test_fraction, val_fraction, seed)
    items = [
        {"scene": k, "n_tiles": min(per_scene, pairs - k * per_scene), "split": splits[scene_ids[k]]}
        for k in range(n_scenes)
    ]
    with scoped_data_context(enable_progress_bars=False):  # ours (tiles) says more; for this dataset only
        # A few blocks per CPU keeps every core busy while each task writes shards of useful size.
        blocks = max(1, min(len(items), 4 * int(ray.available_resources().get("CPU", 1))))
        results = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            synth_batch,
            batch_size=max(1, math.ceil(len(items) / blocks)),
            fn_kwargs={
                "out": out,
                "size": size,
                "seed": seed,
                "metadata": metadata.to_dict(),
                "options": {"s3_endpoint": options.s3_endpoint, "s3_region": options.s3_region},
                "max_rows_per_shard": shard_rows_for(metadata, 64.0),
                "known_ids_ref": ray.put(existing_tiles(out, options)[0]),
            },
            num_cpus=1,
        )
        summary = SynthSummary(scenes=n_scenes)
        all_stats = []
        with tqdm(total=pairs, desc="synth", unit="tile", disable=not progress) as bar:
            for row in results.iter_rows():
                summary.tiles[row["split"]] += int(row["tiles"])
                all_stats.append(
                    np.frombuffer(row["stats"], dtype=np.float64).reshape(-1, len(synth.CLASSES), 7)
                )
                bar.update(int(row["tiles"]))
    summary.baselines = synth.baselines_from_statistics(np.concatenate(all_stats))

    metadata = read_metadata(out, options)
    metadata.extra["synthetic"] = {"seed": seed, "pairs": pairs, "baseline_psnr": summary.baselines}
    metadata.extra["landcover_classes"] = list(synth.CLASSES)  # the class map column's index -> name
    metadata.history.append(
        {
            "action": "synth",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seed": seed,
            "tiles": dict(summary.tiles),
        }
    )
    write_metadata(out, metadata, options)
    if scenes_dir:
        summary.scene_files = write_scene_geotiffs(scenes_dir, n_scene_files, scene_size, seed)
    summary.seconds = time.perf_counter() - started
    return summary


#: The encodings of the synthetic GeoTIFF scenes, in turn: how archives store Sentinel-1 backscatter.
SCENE_ENCODINGS = ("db", "linear", "dn")


def write_scene_geotiffs(out_dir: str, n_scenes: int, size: int, seed: int, block: int = 256) -> list[str]:
    """Write large georeferenced SAR scenes (and their optical partners) as tiled GeoTIFFs.

    Layout: OUT/sar/scene_XXX_<encoding>.tif (float32 dB with NaN nodata, float32 linear power, or
    uint16 DN with nodata 0, in turn) and OUT/optical/scene_XXX_<encoding>.tif (uint8 RGB, nodata
    0). A corner triangle of every scene is nodata, so that nodata handling is exercised. The folder
    is itself an ingest source (sar/ + optical/ layout).
    """
    import rasterio
    from rasterio.transform import Affine

    norm = SarNormalization()
    paths = []
    for k in range(n_scenes):
        encoding = SCENE_ENCODINGS[k % len(SCENE_ENCODINGS)]
        rng = np.random.default_rng([seed, 1_000_000 + k])
        scene = synth.make_scene(rng, size, size, scale=max(8.0, size / 24))
        rows, cols = np.mgrid[0:size, 0:size]
        nodata_mask = rows + cols < size // 8  # top-left corner
        if encoding == "db":
            sar, dtype, nodata = (
                np.where(nodata_mask, np.nan, scene.sar_db).astype(np.float32),
                "float32",
                float("nan"),
            )
        elif encoding == "linear":
            sar, dtype, nodata = (
                np.where(nodata_mask, np.nan, 10 ** (scene.sar_db / 10)).astype(np.float32),
                "float32",
                float("nan"),
            )
        else:
            dn = np.sqrt(10 ** ((scene.sar_db + norm.dn_calibration_db) / 10))
            sar, dtype, nodata = (
                np.where(nodata_mask, 0, np.clip(np.rint(dn), 1, 65535)).astype(np.uint16),
                "uint16",
                0,
            )
        optical = np.where(nodata_mask[..., None], 0, scene.optical).astype(np.uint8)
        a, b, c, d, e, f = scene_transform(k)
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "crs": SYNTH_CRS,
            "transform": Affine(a, b, c, d, e, f),
            "tiled": True,
            "blockxsize": block,
            "blockysize": block,
            "compress": "deflate",
        }
        name = f"scene_{k:03d}_{encoding}.tif"
        for sub, array, extra in (
            ("sar", sar[None], {"count": 1, "dtype": dtype, "nodata": nodata}),
            (
                "optical",
                optical.transpose(2, 0, 1),
                {"count": 3, "dtype": "uint8", "nodata": 0, "photometric": "RGB"},
            ),
        ):
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
            path = os.path.join(out_dir, sub, name)
            with rasterio.open(path, "w", **profile, **extra) as dst:
                dst.write(array)
                if sub == "sar":
                    dst.set_band_description(1, "VV")
                    dst.update_tags(1, units={"db": "dB", "linear": "linear power", "dn": "DN"}[encoding])
            if sub == "sar":
                paths.append(path)
    return paths
