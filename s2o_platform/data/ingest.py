"""`s2o data ingest` and the shared store writer, on Ray Data.

The driver lists pairs (cheap), assigns splits by scene, and reads the tile ids already in the
store. Ray Data then maps work packets (one GeoTIFF scene, or a few dozen small image pairs) to
tasks that read, validate, tile and normalise, write content-addressed Parquet shards straight to
the store and return one summary row per pair. Tiles already in the store are not written again,
so re-running an ingest (or resuming a failed one) adds nothing twice.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from s2o_platform import storage
from s2o_platform.data.extract import PairReport, TilingSettings, tiles_from_pair
from s2o_platform.data.normalization import SarNormalization, SarScale
from s2o_platform.data.rasters import InputError
from s2o_platform.data.ray_context import scoped_data_context
from s2o_platform.data.sources import PairSource, discover_all
from s2o_platform.data.splits import SPLITS, assign_splits
from s2o_platform.data.store import (
    StoreMetadata,
    StoreMissingError,
    discard_staged,
    publish_staged,
    read_columns,
    read_metadata,
    write_metadata,
    write_shards,
)

#: Small image pairs are grouped so that one task writes shards of useful size.
PAIRS_PER_PACKET = 32
LOSS_WARNING = 0.10  # a pair losing more than this share of its windows is named in the summary


@dataclass
class IngestSummary:
    pairs_found: int = 0
    pairs_ingested: int = 0
    tiles_written: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    tiles_already_present: int = 0
    windows_masked: int = 0  # kept windows with some invalid pixels (masked in losses and metrics)
    windows_skipped: Counter = field(default_factory=Counter)
    skipped: list[dict[str, str]] = field(default_factory=list)
    scales: Counter = field(default_factory=Counter)
    #: pairs that lost more than LOSS_WARNING of their windows to the validity rules: path, lost, windows
    heavy_losses: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_written(self) -> int:
        return sum(self.tiles_written.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["windows_skipped"] = dict(self.windows_skipped)
        d["scales"] = dict(self.scales)
        return d


def ensure_store_metadata(out: str, wanted: StoreMetadata, options: storage.StorageOptions) -> StoreMetadata:
    """Open the store at `out` (checking it matches `wanted`) or create it."""
    try:
        existing = read_metadata(out, options)
    except StoreMissingError:
        write_metadata(out, wanted, options)
        return wanted
    existing.check_compatible(wanted, f"the existing store {out}")
    return existing


def existing_tiles(out: str, options: storage.StorageOptions) -> tuple[set[str], dict[str, str]]:
    """Tile ids already in the store, and the split each known scene is in."""
    table = read_columns(out, ["tile_id", "scene_id", "split"], options)
    ids = set(table.column("tile_id").to_pylist())
    scenes = dict(zip(table.column("scene_id").to_pylist(), table.column("split").to_pylist()))
    return ids, scenes


def make_packets(pairs: list[PairSource], splits: dict[str, str]) -> list[dict[str, str]]:
    """Group pairs into work packets: each GeoTIFF scene alone, small images by PAIRS_PER_PACKET."""
    scenes, images = [], []
    for p in pairs:
        item = {**p.to_dict(), "split": splits[p.scene_id]}
        is_scene = p.sar.lower().endswith((".tif", ".tiff")) or p.source_kind == "site"
        (scenes if is_scene else images).append(item)
    packets = [[s] for s in scenes]
    packets += [images[i : i + PAIRS_PER_PACKET] for i in range(0, len(images), PAIRS_PER_PACKET)]
    return [{"pairs": json.dumps(p)} for p in packets]


def ingest_packet(
    batch: dict[str, np.ndarray],
    out: str,
    settings: dict,
    metadata: dict,
    options: dict,
    known_ids_ref: Any,
    max_rows_per_shard: int,
) -> dict[str, list]:
    """Ray Data UDF: tile every pair in the packet, write shards, return one summary row per pair."""
    import ray

    known_ids = ray.get(known_ids_ref) if known_ids_ref is not None else set()
    tiling = TilingSettings(**{**settings, "sar_scale": SarScale(settings["sar_scale"])})
    store_meta = StoreMetadata.from_dict(metadata)
    storage_options = storage.StorageOptions(**options)
    rows_out: dict[str, list] = {
        k: []
        for k in (
            "path",
            "status",
            "reason",
            "written",
            "present",
            "split",
            "scale",
            "windows",
            "windows_masked",
            "windows_skipped",
        )
    }
    for packet in batch["pairs"]:
        buffer: list[dict] = []
        for item in json.loads(packet):
            split = item.pop("split")
            pair = PairSource(**item)
            report = PairReport()
            written = present = 0
            status, reason = "ok", ""
            # A pair contributes all its tiles or none: its rows wait in `pending`, and when a large pair fills
            # a shard before it ends, the shard is staged (invisible to readers) until the pair completes.
            pending: list[dict] = []
            pair_ids: set[str] = set()
            staging = uuid.uuid4().hex
            try:
                for row in tiles_from_pair(
                    pair,
                    split,
                    tiling,
                    store_meta.sar_normalization,
                    store_meta.optical_normalization,
                    storage_options,
                    report,
                ):
                    if row["tile_id"] in known_ids or row["tile_id"] in pair_ids:
                        present += 1
                        continue
                    pair_ids.add(row["tile_id"])
                    pending.append(row)
                    if len(pending) >= max_rows_per_shard:
                        write_shards(
                            out, pending, store_meta, max_rows_per_shard, storage_options, staging=staging
                        )
                        written += len(pending)
                        pending = []
                written += len(pending)
                publish_staged(out, staging, storage_options)
                buffer += pending
                known_ids |= pair_ids
                if len(buffer) >= max_rows_per_shard:
                    write_shards(out, buffer, store_meta, max_rows_per_shard, storage_options)
                    buffer = []
            except InputError as err:
                status, reason = "skipped", str(err)
            except Exception as err:  # noqa: BLE001 - any failure of one pair is that pair's reason
                status, reason = "skipped", f"{type(err).__name__}: {err}"
                traceback.print_exc()
            if status == "skipped":
                discard_staged(out, staging, storage_options)  # never half a scene
                written = 0
            for key, value in (
                ("path", pair.uri_prefix + pair.sar),
                ("status", status),
                ("reason", reason),
                ("written", written),
                ("present", present),
                ("split", split),
                ("scale", f"{report.scale}: {report.scale_reason}" if report.scale else ""),
                ("windows", report.windows),
                ("windows_masked", report.windows_masked),
                ("windows_skipped", json.dumps(dict(report.windows_skipped))),
            ):
                rows_out[key].append(value)
        if buffer:
            write_shards(out, buffer, store_meta, max_rows_per_shard, storage_options)
    return rows_out


def shard_rows_for(metadata: StoreMetadata, shard_mb: float) -> int:
    """Rows per shard so that a shard holds about `shard_mb` MB of pixels."""
    bytes_per_row = metadata.tile_size**2 * (2 * metadata.sar_channels + metadata.optical_channels)
    return max(1, int(shard_mb * 1e6 // bytes_per_row))


def run_ingest(
    sources: list[str],
    out: str,
    tile_size: int = 256,
    stride: int | None = None,
    sar_scale: SarScale | str = SarScale.AUTO,
    clip_db: tuple[float, float] = (-25.0, 0.0),
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    seed: int = 0,
    sar_band: str | None = None,
    shard_mb: float = 64.0,
    options: storage.StorageOptions | None = None,
    progress: bool = True,
    max_nodata: float = 0.1,
) -> IngestSummary:
    """Ingest SOURCES into the store at OUT on the current Ray cluster (ray.init must have run)."""
    import ray
    import ray.data
    from tqdm import tqdm

    options = options or storage.StorageOptions.from_env()
    started = time.perf_counter()
    summary = IngestSummary()
    pairs, skipped = discover_all(sources, options)
    summary.pairs_found = len(pairs)
    summary.skipped = [asdict(s) for s in skipped]
    if not pairs:
        summary.seconds = time.perf_counter() - started
        return summary

    wanted = StoreMetadata(
        tile_size=tile_size, sar_channels=1, sar_normalization=SarNormalization(clip_db=tuple(clip_db))
    )
    metadata = ensure_store_metadata(out, wanted, options)
    known_ids, known_scenes = existing_tiles(out, options)
    splits = assign_splits(
        {p.scene_id for p in pairs}, test_fraction, val_fraction, seed, existing=known_scenes
    )

    with scoped_data_context(enable_progress_bars=False):  # ours (pairs) says more; for this dataset only
        packets = make_packets(pairs, splits)
        settings = asdict(TilingSettings(tile_size, stride, SarScale(sar_scale), sar_band, max_nodata))
        settings["sar_scale"] = SarScale(sar_scale).value
        results = ray.data.from_items(packets, override_num_blocks=len(packets)).map_batches(
            ingest_packet,
            batch_size=1,
            fn_kwargs={
                "out": out,
                "settings": settings,
                "metadata": metadata.to_dict(),
                "options": asdict(options),
                "known_ids_ref": ray.put(known_ids),
                "max_rows_per_shard": shard_rows_for(metadata, shard_mb),
            },
            num_cpus=1,
        )
        with tqdm(total=len(pairs), desc="ingest", unit="pair", disable=not progress) as bar:
            for row in results.iter_rows():
                bar.update(1)
                if row["status"] == "ok":
                    summary.pairs_ingested += 1
                    summary.tiles_written[row["split"]] += int(row["written"])
                    summary.tiles_already_present += int(row["present"])
                    summary.scales[row["scale"].split(":")[0]] += 1
                else:
                    summary.skipped.append({"path": row["path"], "reason": row["reason"]})
                summary.windows_masked += int(row["windows_masked"]) if row["status"] == "ok" else 0
                lost = json.loads(row["windows_skipped"])
                summary.windows_skipped.update(lost)
                if row["status"] == "ok" and sum(lost.values()) > LOSS_WARNING * max(1, int(row["windows"])):
                    summary.heavy_losses.append(
                        {
                            "path": row["path"],
                            "lost": sum(lost.values()),
                            "windows": int(row["windows"]),
                            "reasons": lost,
                        }
                    )
                bar.set_postfix(tiles=summary.total_written, skipped=len(summary.skipped))

    metadata = read_metadata(out, options)
    metadata.history.append(
        {
            "action": "ingest",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sources": list(sources),
            "tile_size": tile_size,
            "stride": stride or tile_size,
            "seed": seed,
            "tiles_written": dict(summary.tiles_written),
            "pairs_skipped": len(summary.skipped),
        }
    )
    write_metadata(out, metadata, options)
    summary.seconds = time.perf_counter() - started
    return summary


def format_summary(summary: IngestSummary) -> str:
    lines = [
        f"pairs found:            {summary.pairs_found}",
        f"pairs ingested:         {summary.pairs_ingested}",
        "tiles written:          "
        + ", ".join(f"{k} {v}" for k, v in summary.tiles_written.items())
        + f" (total {summary.total_written})",
        f"tiles already in store: {summary.tiles_already_present}",
    ]
    if summary.scales:
        lines.append("SAR scales detected:    " + ", ".join(f"{k} x{v}" for k, v in summary.scales.items()))
    if summary.windows_masked:
        lines.append(
            f"windows kept masked:    {summary.windows_masked} (invalid pixels under --max-nodata, ignored by losses and metrics)"
        )
    if summary.windows_skipped:
        lines.append(
            "windows skipped:        " + ", ".join(f"{k}: {v}" for k, v in summary.windows_skipped.items())
        )
    for loss in summary.heavy_losses[:20]:
        reasons = ", ".join(f"{k}: {v}" for k, v in loss["reasons"].items())
        lines.append(
            f"warning: {loss['path']} lost {loss['lost']} of its {loss['windows']} windows ({reasons})"
        )
    if len(summary.heavy_losses) > 20:
        lines.append(
            f"warning: ... and {len(summary.heavy_losses) - 20} more pairs lost over {LOSS_WARNING:.0%} of their windows"
        )
    lines.append(f"items skipped:          {len(summary.skipped)}")
    for item in summary.skipped[:50]:
        lines.append(f"  - {item['path']}: {item['reason']}")
    if len(summary.skipped) > 50:
        lines.append(f"  ... and {len(summary.skipped) - 50} more")
    lines.append(f"time:                   {summary.seconds:.1f} s")
    return "\n".join(lines)
