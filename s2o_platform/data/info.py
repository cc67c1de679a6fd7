"""`s2o data info`: what a store holds, read from metadata, Parquet footers and a small sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq

from s2o_platform import storage
from s2o_platform.data.store import TILE_SCHEMA, decode_batch, read_metadata, shard_paths, split_counts


def store_info(uri: str, sample: int = 256, options: storage.StorageOptions | None = None) -> dict[str, Any]:
    metadata = read_metadata(uri, options)
    counts = split_counts(uri, options)
    fs, _ = storage.resolve(uri, options)
    paths = shard_paths(uri, options=options)
    rows: dict[str, list] = {}
    scenes: set[str] = set()
    sources: dict[str, int] = {}
    georeferenced = 0
    for path in paths:
        table = pq.read_table(path, filesystem=fs, columns=["scene_id", "source_kind", "crs"])
        scenes.update(table.column("scene_id").to_pylist())
        for kind in table.column("source_kind").to_pylist():
            sources[kind] = sources.get(kind, 0) + 1
        georeferenced += table.column("crs").is_valid().to_numpy(zero_copy_only=False).sum()
    for path in paths:
        if sum(len(v) for v in rows.values()) and len(rows["tile_id"]) >= sample:
            break
        table = pq.read_table(
            path, filesystem=fs, columns=["tile_id", "sar", "optical", "tile_size", "sar_channels"]
        )
        for name in table.column_names:
            rows.setdefault(name, []).extend(table.column(name).to_pylist())
    stats: dict[str, Any] = {}
    if rows:
        batch = {k: np.asarray(v[:sample], dtype=object) for k, v in rows.items()}
        decoded = decode_batch(batch)
        sar, optical = decoded["sar"], (decoded["optical"] + 1) * 127.5
        stats = {
            "sample_rows": int(len(sar)),
            "sar_model_range_mean_std": [float(sar.mean()), float(sar.std())],
            "sar_clipped_fraction": float(np.mean(np.abs(sar) >= 0.999)),
            "optical_mean_rgb": [round(float(optical[:, c].mean()), 2) for c in range(3)],
            "optical_std_rgb": [round(float(optical[:, c].std()), 2) for c in range(3)],
        }
    return {
        "store": uri,
        "rows": counts,
        "total_rows": sum(counts.values()),
        "shards": len(paths),
        "scenes": len(scenes),
        "tiles_georeferenced": int(georeferenced),
        "source_kinds": sources,
        "tile_size": metadata.tile_size,
        "sar_channels": metadata.sar_channels,
        "optical_channels": metadata.optical_channels,
        "sar_normalization": metadata.sar_normalization.to_dict(),
        "optical_normalization": metadata.optical_normalization.to_dict(),
        "extra": metadata.extra,
        "history": metadata.history[-5:],
        "schema": {f.name: str(f.type) for f in TILE_SCHEMA},
        "statistics": stats,
    }


def format_info(info: dict[str, Any]) -> str:
    norm = info["sar_normalization"]
    lines = [
        f"store:          {info['store']}",
        "rows:           "
        + ", ".join(f"{k} {v}" for k, v in info["rows"].items())
        + f" (total {info['total_rows']})",
        f"shards:         {info['shards']}",
        f"scenes:         {info['scenes']}",
        f"georeferenced:  {info['tiles_georeferenced']} tiles",
        "sources:        " + ", ".join(f"{k} {v}" for k, v in info["source_kinds"].items()),
        f"tile size:      {info['tile_size']} px, SAR channels {info['sar_channels']}, optical channels {info['optical_channels']}",
        f"SAR norm:       dB window {norm['clip_db']} -> [-1, 1] (DN calibration {norm['dn_calibration_db']} dB; 8-bit input taken as display-scaled)",
        f"optical norm:   8-bit as is; reflectance 0..{info['optical_normalization']['display_max_reflectance']} -> 0..255",
    ]
    baselines = info["extra"].get("synthetic", {}).get("baseline_psnr")
    if baselines:
        lines.append(
            f"baselines:      PSNR mean colour {baselines['mean_colour']:.2f} dB, class oracle {baselines['class_oracle']:.2f} dB"
        )
    stats = info["statistics"]
    if stats:
        lines += [
            f"sample:         {stats['sample_rows']} rows",
            f"  SAR [-1,1]:   mean {stats['sar_model_range_mean_std'][0]:.3f}, std {stats['sar_model_range_mean_std'][1]:.3f}, "
            f"clipped {100 * stats['sar_clipped_fraction']:.1f}%",
            f"  optical RGB:  mean {stats['optical_mean_rgb']}, std {stats['optical_std_rgb']}",
        ]
    lines.append("schema:")
    lines += [f"  {name}: {kind}" for name, kind in info["schema"].items()]
    return "\n".join(lines)
