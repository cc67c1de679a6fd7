"""The tile store: paired SAR/optical tiles as sharded Parquet, on local disk or s3://.

Layout of a store at STORE (a folder or an object prefix):

    STORE/_s2o_store.json        metadata: tile size, channels, SAR and optical normalisation, history
    STORE/train/<sha>.parquet    shards of the train split (at most `max_rows_per_shard` rows each)
    STORE/val/<sha>.parquet
    STORE/test/<sha>.parquet

Shard names are content hashes of the tile ids they hold, so a retried task rewrites the same file
instead of adding a second one. The columns are listed in `TILE_SCHEMA` and in the README.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2o_platform import storage
from s2o_platform.data.normalization import OpticalNormalization, SarNormalization, uint8_to_model
from s2o_platform.data.splits import SPLITS
from s2o_platform.errors import S2OError

METADATA_FILE = "_s2o_store.json"
STAGING_DIR = "_staging"  # shards of a pair still being ingested; never read
STORE_FORMAT = "s2o-tile-store"
STORE_FORMAT_VERSION = 1

TILE_SCHEMA = pa.schema(
    [
        pa.field("tile_id", pa.string(), nullable=False),  # sha256 of the stored SAR+optical bytes (24 hex)
        pa.field("scene_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("sar", pa.binary(), nullable=False),  # float16 little-endian, H x W x C_sar, in [-1, 1]
        pa.field("optical", pa.binary(), nullable=False),  # uint8, H x W x 3 (RGB)
        pa.field("tile_size", pa.int32(), nullable=False),
        pa.field("sar_channels", pa.int32(), nullable=False),
        pa.field("sar_scale", pa.string(), nullable=False),  # how the raw SAR was expressed (db, linear, ...)
        pa.field("row_off", pa.int32(), nullable=False),  # window origin in the source raster (pixels)
        pa.field("col_off", pa.int32(), nullable=False),
        pa.field("crs", pa.string()),  # EPSG code ('EPSG:32631') or WKT; null when not georeferenced
        pa.field("transform", pa.list_(pa.float64(), 6)),  # window affine (a, b, c, d, e, f); null likewise
        pa.field("sar_path", pa.string(), nullable=False),
        pa.field("optical_path", pa.string(), nullable=False),
        pa.field("source_kind", pa.string(), nullable=False),  # sen12 | folders | csv | geotiff | synth
        pa.field("landcover", pa.binary()),  # optional class map, uint8 H x W; null where the source has none
        # per-pixel validity, H x W bits (np.packbits, row-major); null when every pixel is valid. Invalid pixels
        # (nodata in the source, in a window kept under --max-nodata) hold a fill and are ignored by every
        # training loss and evaluation metric. Shards written before this column read it as null.
        pa.field("valid", pa.binary()),
    ]
)

OPTICAL_CHANNELS = 3
#: The `landcover` value of an unlabelled pixel (nodata in a label file): ignored when fitting and scoring.
UNLABELLED = 255


class StoreError(S2OError, ValueError):
    """A store that is missing, empty or inconsistent with what is asked of it."""


class StoreMissingError(StoreError):
    """No store at all at the path: its metadata file does not exist (ingest creates one there)."""


@dataclass
class StoreMetadata:
    """What every consumer of a store must agree on, plus the store's history."""

    tile_size: int
    sar_channels: int
    sar_normalization: SarNormalization
    optical_normalization: OpticalNormalization = field(default_factory=OpticalNormalization)
    optical_channels: int = OPTICAL_CHANNELS
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "tile_size": self.tile_size,
            "sar_channels": self.sar_channels,
            "optical_channels": self.optical_channels,
            "sar_normalization": self.sar_normalization.to_dict(),
            "optical_normalization": self.optical_normalization.to_dict(),
            "extra": self.extra,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreMetadata:
        if d.get("format") != STORE_FORMAT:
            raise StoreError(f"not an s2o tile store (format {d.get('format')!r})")
        if int(d.get("format_version", 0)) > STORE_FORMAT_VERSION:
            raise StoreError(
                f"store format version {d['format_version']} is newer than this s2o-platform reads "
                f"({STORE_FORMAT_VERSION}); upgrade s2o-platform"
            )
        return cls(
            tile_size=int(d["tile_size"]),
            sar_channels=int(d["sar_channels"]),
            optical_channels=int(d.get("optical_channels", OPTICAL_CHANNELS)),
            sar_normalization=SarNormalization.from_dict(d["sar_normalization"]),
            optical_normalization=OpticalNormalization.from_dict(d.get("optical_normalization", {})),
            extra=dict(d.get("extra", {})),
            history=list(d.get("history", [])),
        )

    def check_compatible(self, other: StoreMetadata, where: str) -> None:
        """Raise if tiles described by `other` cannot be added to a store described by self."""
        for name in ("tile_size", "sar_channels", "optical_channels", "sar_normalization"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise StoreError(
                    f"{where} has {name}={mine!r} but this ingest asks for {theirs!r}; "
                    "ingest into a new --out store or use the store's settings"
                )


# ---------------------------------------------------------------------------------------------
# Encoding of one tile
# ---------------------------------------------------------------------------------------------


def encode_tile(sar: np.ndarray, optical: np.ndarray) -> tuple[bytes, bytes, str]:
    """Serialise a tile pair; returns (sar_bytes, optical_bytes, tile_id).

    Args:
        sar: float array in [-1, 1], shape (H, W) or (H, W, C).
        optical: uint8 array, shape (H, W, 3).
    """
    if sar.ndim == 2:
        sar = sar[:, :, None]
    if optical.dtype != np.uint8 or optical.ndim != 3 or optical.shape[2] != OPTICAL_CHANNELS:
        raise ValueError(f"optical tile must be uint8 (H, W, 3), got {optical.dtype} {optical.shape}")
    if sar.shape[:2] != optical.shape[:2]:
        raise ValueError(f"SAR tile {sar.shape[:2]} and optical tile {optical.shape[:2]} differ in size")
    sar_bytes = np.ascontiguousarray(sar, dtype="<f2").tobytes()
    optical_bytes = np.ascontiguousarray(optical).tobytes()
    tile_id = hashlib.sha256(sar_bytes + optical_bytes).hexdigest()[:24]
    return sar_bytes, optical_bytes, tile_id


def tile_row(
    sar: np.ndarray,
    optical: np.ndarray,
    *,
    scene_id: str,
    split: str,
    sar_scale: str,
    row_off: int,
    col_off: int,
    crs: str | None,
    transform: Sequence[float] | None,
    sar_path: str,
    optical_path: str,
    source_kind: str,
    landcover: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> dict[str, Any]:
    """One row of TILE_SCHEMA, the one place a stored tile is assembled (ingest and synth alike).

    `sar`: model values in [-1, 1], (H, W) or (H, W, C); `optical`: uint8 (H, W, 3); `landcover`: (H, W) class
    numbers or None; `valid`: (H, W) bool or None (every pixel valid). The tile id hashes the stored bytes."""
    sar_bytes, optical_bytes, tile_id = encode_tile(sar, optical)
    return {
        "tile_id": tile_id,
        "scene_id": scene_id,
        "split": split,
        "sar": sar_bytes,
        "optical": optical_bytes,
        "tile_size": int(optical.shape[0]),
        "sar_channels": 1 if sar.ndim == 2 else int(sar.shape[2]),
        "sar_scale": sar_scale,
        "row_off": int(row_off),
        "col_off": int(col_off),
        "crs": crs,
        "transform": list(transform) if transform is not None else None,
        "sar_path": sar_path,
        "optical_path": optical_path,
        "source_kind": source_kind,
        "landcover": None if landcover is None else np.ascontiguousarray(landcover, dtype=np.uint8).tobytes(),
        "valid": None if valid is None else encode_valid(valid),
    }


def decode_sar(data: bytes, tile_size: int, channels: int) -> np.ndarray:
    """(H, W, C) float32 in [-1, 1]."""
    return np.frombuffer(data, dtype="<f2").reshape(tile_size, tile_size, channels).astype(np.float32)


def decode_optical(data: bytes, tile_size: int) -> np.ndarray:
    """(H, W, 3) uint8."""
    return np.frombuffer(data, dtype=np.uint8).reshape(tile_size, tile_size, OPTICAL_CHANNELS)


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn a batch of store rows into model arrays, channels first.

    Returns:
        {"sar": float32 (B, C_sar, H, W) in [-1, 1], "optical": float32 (B, 3, H, W) in [-1, 1],
         "tile_id": object (B,)}, and "landcover": uint8 (B, H, W) when any row carries a class map (rows
         without one are all UNLABELLED), and "valid": bool (B, H, W) when any row has invalid pixels.
    """
    sizes = batch["tile_size"]
    channels = batch["sar_channels"]
    sar = np.stack([decode_sar(b, int(s), int(c)) for b, s, c in zip(batch["sar"], sizes, channels)])
    optical = np.stack([decode_optical(b, int(s)) for b, s in zip(batch["optical"], sizes)])
    decoded = {
        "sar": np.ascontiguousarray(sar.transpose(0, 3, 1, 2)),
        "optical": optical_to_model(optical),
        "tile_id": np.asarray(batch["tile_id"], dtype=object),
    }
    landcover = batch.get("landcover")
    if landcover is not None and any(v is not None for v in landcover):
        decoded["landcover"] = np.stack(
            [
                decode_landcover(b, int(s))
                if b is not None
                else np.full((int(s), int(s)), UNLABELLED, np.uint8)
                for b, s in zip(landcover, sizes)
            ]
        )
    valid = batch.get("valid")
    if valid is not None and any(v is not None for v in valid):
        decoded["valid"] = np.stack([decode_valid(b, int(s)) for b, s in zip(valid, sizes)])
    return decoded


def encode_valid(valid: np.ndarray) -> bytes | None:
    """(H, W) bool -> packed bits, or None when every pixel is valid (the common case costs nothing)."""
    return None if valid.all() else np.packbits(valid.astype(bool), axis=None).tobytes()


def decode_valid(data: bytes | None, tile_size: int) -> np.ndarray:
    """Packed bits (or None: all valid) -> (H, W) bool."""
    if data is None:
        return np.ones((tile_size, tile_size), bool)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=tile_size * tile_size)
    return bits.reshape(tile_size, tile_size).astype(bool)


def optical_to_model(optical: np.ndarray) -> np.ndarray:
    """uint8 tiles (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1], as every model reads them."""
    return np.ascontiguousarray(uint8_to_model(optical.transpose(0, 3, 1, 2)))


def decode_landcover(data: bytes, tile_size: int) -> np.ndarray:
    """(H, W) uint8 class indices."""
    return np.frombuffer(data, dtype=np.uint8).reshape(tile_size, tile_size)


# ---------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------


def read_metadata(uri: str, options: storage.StorageOptions | None = None) -> StoreMetadata:
    """Read a store's metadata; a clear error when there is no store at `uri`."""
    fs, root = storage.resolve(uri, options)
    path = storage.join(root, METADATA_FILE)
    try:
        raw = storage.read_bytes(fs, path)
    except FileNotFoundError:
        raise StoreMissingError(
            f"no tile store at {uri}: {METADATA_FILE} is missing. Create one with "
            "`s2o data ingest SOURCE --out STORE` or `s2o data synth --out STORE`"
        ) from None
    except OSError as err:
        raise StoreError(f"cannot read the tile store at {uri}: {err}") from None
    try:
        return StoreMetadata.from_dict(json.loads(raw))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StoreError(f"corrupt store metadata {uri}/{METADATA_FILE}: {err}") from None


def write_metadata(uri: str, metadata: StoreMetadata, options: storage.StorageOptions | None = None) -> None:
    fs, root = storage.resolve(uri, options)
    data = json.dumps(metadata.to_dict(), indent=2).encode()
    storage.write_bytes_atomic(fs, storage.join(root, METADATA_FILE), data)


def shard_paths(
    uri: str, splits: Sequence[str] = SPLITS, options: storage.StorageOptions | None = None
) -> list[str]:
    """Paths (inside the store's filesystem) of all Parquet shards of the given splits."""
    fs, root = storage.resolve(uri, options)
    paths: list[str] = []
    for split in splits:
        paths += [p for p in storage.list_files(fs, storage.join(root, split)) if p.endswith(".parquet")]
    return paths


def write_shards(
    uri: str,
    rows: list[dict[str, Any]],
    metadata: StoreMetadata,
    max_rows_per_shard: int,
    options: storage.StorageOptions | None = None,
    staging: str | None = None,
) -> list[str]:
    """Write rows (dicts in TILE_SCHEMA) as content-addressed shards, grouped by split.

    Returns the written paths. With `staging` (a folder name) the shards go under STORE/_staging/
    STAGING/<split>/, invisible to readers until `publish_staged` moves them into place. Each shard also carries the store metadata in its Parquet
    key-value metadata, so a shard copied out of its store still says how it was normalised.
    """
    fs, root = storage.resolve(uri, options)
    kv = {b"s2o": json.dumps({k: v for k, v in metadata.to_dict().items() if k != "history"}).encode()}
    schema = TILE_SCHEMA.with_metadata(kv)
    written = []
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        for start in range(0, len(split_rows), max_rows_per_shard):
            chunk = split_rows[start : start + max_rows_per_shard]
            table = pa.Table.from_pylist(chunk, schema=schema)
            name = hashlib.sha256("".join(sorted(r["tile_id"] for r in chunk)).encode()).hexdigest()[:32]
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd")
            base = storage.join(root, STAGING_DIR, staging) if staging else root
            path = storage.join(base, split, f"{name}.parquet")
            storage.write_bytes_atomic(fs, path, sink.getvalue())
            written.append(path)
    return written


def publish_staged(uri: str, staging: str, options: storage.StorageOptions | None = None) -> int:
    """Move the shards staged under STORE/_staging/STAGING into their split folders; returns how many."""
    fs, root = storage.resolve(uri, options)
    base = storage.join(root, STAGING_DIR, staging)
    moved = 0
    for path in storage.list_files(fs, base):
        relative = path[len(base) :].lstrip("/")
        fs.create_dir(storage.join(root, relative.rsplit("/", 1)[0]), recursive=True)
        fs.move(path, storage.join(root, relative))
        moved += 1
    discard_staged(uri, staging, options)
    return moved


def discard_staged(uri: str, staging: str, options: storage.StorageOptions | None = None) -> None:
    """Remove what is staged under STORE/_staging/STAGING (a pair that failed midway)."""
    fs, root = storage.resolve(uri, options)
    base = storage.join(root, STAGING_DIR, staging)
    if storage.exists(fs, base):
        fs.delete_dir(base)


def read_columns(uri: str, columns: list[str], options: storage.StorageOptions | None = None) -> pa.Table:
    """Read a few columns of every shard with pyarrow (driver side; for ids, splits, statistics)."""
    fs, _ = storage.resolve(uri, options)
    paths = shard_paths(uri, options=options)
    if not paths:
        return pa.table({c: pa.array([], type=TILE_SCHEMA.field(c).type) for c in columns})
    tables = [pq.read_table(p, columns=columns, filesystem=fs) for p in paths]
    return pa.concat_tables(tables)


def split_counts(uri: str, options: storage.StorageOptions | None = None) -> dict[str, int]:
    """Rows per split, from Parquet footers only (no data pages read)."""
    fs, root = storage.resolve(uri, options)
    counts = {}
    for split in SPLITS:
        n = 0
        for path in shard_paths(uri, [split], options):
            with fs.open_input_file(path) as f:
                n += pq.ParquetFile(f).metadata.num_rows
        counts[split] = n
    return counts


def read_tiles(
    uri: str,
    split: str | Sequence[str] | None = None,
    options: storage.StorageOptions | None = None,
    columns: list[str] | None = None,
):
    """A Ray Dataset of store rows (local path or s3://), optionally restricted to splits."""
    import ray.data

    splits = list(SPLITS) if split is None else [split] if isinstance(split, str) else list(split)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise StoreError(f"unknown split(s) {sorted(unknown)}; choose from {list(SPLITS)}")
    read_metadata(uri, options)
    paths = shard_paths(uri, splits, options)
    if not paths:
        raise StoreError(f"the store {uri} has no tiles in split(s) {splits}")
    fs, _ = storage.resolve(uri, options)
    dataset = ray.data.read_parquet(paths, filesystem=fs)
    # Ray 2.60 deprecates read_parquet(columns=); its optimizer pushes this projection down into the read
    return dataset.select_columns(columns) if columns else dataset
