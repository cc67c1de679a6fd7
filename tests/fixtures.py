"""Tiny seeded inputs for the tests, written with Pillow and rasterio (32-96 px, real EPSG codes)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin

UTM31 = "EPSG:32631"
# The repository's root, found from this file (tests/fixtures.py) whatever folder a test module sits in.
REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIGS = REPO_ROOT / "configs" / "tiny"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def sar_png(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return rng.integers(20, 235, size=(size, size), dtype=np.uint8)


def optical_png(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    return rng.integers(10, 245, size=(size, size, 3), dtype=np.uint8)


def write_paired_folders(root: Path, n: int = 4, size: int = 64, seed: int = 0) -> Path:
    """root/sar/pair_k.png + root/optical/pair_k.png."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        write_png(root / "sar" / f"pair_{k}.png", sar_png(rng, size))
        write_png(root / "optical" / f"pair_{k}.png", optical_png(rng, size))
    return root


def write_sen12(root: Path, scenes: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """SEN1-2 layout: ROIs1158_spring/s1_90/ROIs1158_spring_s1_90_p33.png etc.

    scenes: {'ROIs1158_spring_90': n_patches, ...}
    """
    rng = np.random.default_rng(seed)
    for scene, n in scenes.items():
        roi, season, number = scene.split("_")
        for p in range(n):
            folder = root / f"{roi}_{season}"
            write_png(folder / f"s1_{number}" / f"{roi}_{season}_s1_{number}_p{p}.png", sar_png(rng, size))
            write_png(
                folder / f"s2_{number}" / f"{roi}_{season}_s2_{number}_p{p}.png", optical_png(rng, size)
            )
    return root


def write_geotiff(
    path: Path,
    array: np.ndarray,
    transform: Affine,
    crs: str | None = UTM31,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
) -> Path:
    """array: (bands, rows, cols)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": str(array.dtype),
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def sar_db_scene(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return rng.uniform(-22, -2, size=(1, rows, cols)).astype(np.float32)


def write_geotiff_pair(
    root: Path, name: str = "scene", rows: int = 96, cols: int = 80, seed: int = 0, shift_px: int = 0
) -> tuple[Path, Path]:
    """A SAR dB scene and a 3-band uint16 reflectance optical scene on the same (or shifted) 10 m grid."""
    rng = np.random.default_rng(seed)
    transform = from_origin(600_000.0, 4_800_000.0, 10.0, 10.0)
    sar = write_geotiff(
        root / "sar" / f"{name}.tif", sar_db_scene(rng, rows, cols), transform, descriptions=["VV"]
    )
    optical_transform = from_origin(600_000.0 - 10.0 * shift_px, 4_800_000.0 + 10.0 * shift_px, 10.0, 10.0)
    reflectance = rng.integers(100, 3000, size=(3, rows + 2 * shift_px, cols + 2 * shift_px), dtype=np.uint16)
    optical = write_geotiff(root / "optical" / f"{name}.tif", reflectance, optical_transform)
    return sar, optical


def truncate(path: Path, keep_fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, crs: str | None = UTM31, nodata=None) -> bytes:
    from s2o_platform.serving.codec import geotiff_bytes

    return geotiff_bytes(
        array, crs=crs, transform=from_origin(600_000.0, 4_800_000.0, 10.0, 10.0), nodata=nodata
    )


def shared_real_data() -> Path | None:
    """../shared/data/real beside the repository, when present."""
    candidate = Path(os.environ.get("S2O_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))
    return candidate if candidate.is_dir() else None


def write_smallest_bundles(root: Path, tile: int) -> dict[str, str]:
    """Untrained teacher, student and pix2pix bundles of the smallest networks that still have every part
    (one down and one up block of 8 channels): for tests of inference plumbing, where weights do not matter."""
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.store import StoreMetadata
    from s2o_platform.train.untrained import write_untrained_bundles

    configs = root / "configs"
    configs.mkdir(parents=True)
    (configs / "teacher.yaml").write_text(
        f"model:\n  sample_size: {tile}\n  block_out_channels: [8]\n  layers_per_block: 1\n"
        "  down_block_types: [DownBlock2D]\n  up_block_types: [UpBlock2D]\n  attention_head_dim: 8\n  norm_num_groups: 8\n"
    )
    (configs / "distill.yaml").write_text("{}\n")
    (configs / "gan.yaml").write_text("generator:\n  base_channels: 8\n")
    store = StoreMetadata(tile_size=tile, sar_channels=1, sar_normalization=SarNormalization())
    return write_untrained_bundles(configs, root / "bundles", store)


#: `--set` overrides of the tiny teacher preset for a smaller U-Net (two 32-channel levels, no attention): the
#: training end-to-end tests' network, quick on 2 cores; the preset itself is checked elsewhere.
SMALL_TEACHER_UNET = [
    "model.block_out_channels=[32, 32]",
    "model.down_block_types=[DownBlock2D, DownBlock2D]",
    "model.up_block_types=[UpBlock2D, UpBlock2D]",
]


def tile_rows(
    n: int, size: int = 8, splits: tuple[str, ...] = ("train", "val", "test"), seed: int = 0
) -> list[dict]:
    """`n` seeded TILE_SCHEMA rows (data/store.tile_row), the splits taken in turn, three scenes."""
    from s2o_platform.data.store import tile_row

    rows = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        rows.append(
            tile_row(
                rng.uniform(-1, 1, (size, size)).astype(np.float32),
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                scene_id=f"scene{i % 3}",
                split=splits[i % len(splits)],
                sar_scale="db",
                row_off=0,
                col_off=0,
                crs=UTM31,
                transform=[10.0, 0.0, 0.0, 0.0, -10.0, 0.0],
                sar_path="a",
                optical_path="b",
                source_kind="folders",
            )
        )
    return rows


def write_small_store(uri: str, tile_size: int = 32, n: int = 12) -> str:
    """A tile store of `n` random tiles written without Ray (metadata + one shard per split): for checks that
    only need a store to exist and say what it holds, such as refusals before any work."""
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.store import StoreMetadata, write_metadata, write_shards

    metadata = StoreMetadata(tile_size=tile_size, sar_channels=1, sar_normalization=SarNormalization())
    write_metadata(uri, metadata)
    write_shards(uri, tile_rows(n, tile_size), metadata, max_rows_per_shard=n)
    return uri
