import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from s2o_platform.data.normalization import SarNormalization
from s2o_platform.data.store import (
    METADATA_FILE,
    TILE_SCHEMA,
    StoreError,
    StoreMetadata,
    decode_batch,
    encode_tile,
    read_metadata,
    shard_paths,
    split_counts,
    tile_row,
    write_metadata,
    write_shards,
)
from tests.fixtures import tile_rows


def _row(i: int, split: str, size: int = 8) -> dict:
    return tile_rows(1, size, splits=(split,), seed=i)[0] | {"scene_id": f"scene{i % 3}"}


def test_tile_row_fits_the_schema_and_decodes_back():
    """The one builder of stored rows (ingest and synth): every schema column, values that decode to the inputs."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    sar = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
    optical = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    classes = rng.integers(0, 5, (8, 8)).astype(np.uint8)
    valid = np.ones((8, 8), bool)
    valid[0, :3] = False
    common = dict(
        scene_id="s",
        split="train",
        sar_scale="db",
        row_off=16,
        col_off=8,
        crs="EPSG:32631",
        transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0),
        sar_path="a",
        optical_path="b",
        source_kind="folders",
    )
    row = tile_row(sar, optical, landcover=classes, valid=valid, **common)
    bare = tile_row(sar, optical, **common)
    assert set(row) == set(TILE_SCHEMA.names)
    table = pa.Table.from_pylist([row, bare], schema=TILE_SCHEMA)  # types and nullability checked by Arrow
    batch = decode_batch({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names})
    assert row["tile_id"] == encode_tile(sar, optical)[2] and (row["row_off"], row["tile_size"]) == (16, 8)
    np.testing.assert_allclose(batch["sar"][0, 0], sar, atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(batch["landcover"][0], classes)
    assert bytes(table.column("optical")[0].as_py()) == optical.tobytes()
    np.testing.assert_array_equal(batch["valid"][0].reshape(8, 8), valid)
    assert bare["landcover"] is None and bare["valid"] is None  # all valid: no bits stored


def _meta(size: int = 8) -> StoreMetadata:
    return StoreMetadata(tile_size=size, sar_channels=1, sar_normalization=SarNormalization())


def test_encode_decode_roundtrip_and_layout():
    sar = np.linspace(-1, 1, 2 * 3 * 3, dtype=np.float32).reshape(3, 3, 2)
    optical = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    sar_b, opt_b, tile_id = encode_tile(sar, optical)
    assert len(sar_b) == 3 * 3 * 2 * 2 and len(opt_b) == 27 and len(tile_id) == 24
    out = decode_batch(
        {"sar": [sar_b], "optical": [opt_b], "tile_size": [3], "sar_channels": [2], "tile_id": [tile_id]}
    )
    assert out["sar"].shape == (1, 2, 3, 3) and out["optical"].shape == (1, 3, 3, 3)
    np.testing.assert_allclose(out["sar"][0], sar.transpose(2, 0, 1), atol=1e-3)  # float16 precision
    # optical 0 -> -1, 255 -> 1; pixel (0, 0) channel 2 is value 2
    assert out["optical"][0, 2, 0, 0] == pytest.approx(2 / 127.5 - 1)


def test_tile_id_is_content_derived():
    sar = np.zeros((4, 4), np.float32)
    opt = np.zeros((4, 4, 3), np.uint8)
    assert encode_tile(sar, opt)[2] == encode_tile(sar.copy(), opt.copy())[2]
    opt2 = opt.copy()
    opt2[0, 0, 0] = 1
    assert encode_tile(sar, opt)[2] != encode_tile(sar, opt2)[2]


def test_encode_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in size"):
        encode_tile(np.zeros((4, 4), np.float32), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        encode_tile(np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.float32))


def test_write_shards_bounded_split_and_idempotent(tmp_path):
    meta = _meta()
    write_metadata(str(tmp_path), meta)
    rows = [_row(i, "train") for i in range(10)] + [_row(100 + i, "test") for i in range(3)]
    first = write_shards(str(tmp_path), rows, meta, max_rows_per_shard=4)
    assert len([p for p in first if "/train/" in p]) == 3 and len([p for p in first if "/test/" in p]) == 1
    for path in first:
        table = pq.read_table(path)
        assert table.num_rows <= 4
        assert table.schema.remove_metadata().equals(TILE_SCHEMA)
        assert json.loads(table.schema.metadata[b"s2o"])["tile_size"] == 8
    again = write_shards(str(tmp_path), rows, meta, max_rows_per_shard=4)
    assert sorted(again) == sorted(first)  # same content -> same names: a retry overwrites, never duplicates
    assert split_counts(str(tmp_path)) == {"train": 10, "val": 0, "test": 3}
    assert len(shard_paths(str(tmp_path))) == 4


def test_metadata_roundtrip_and_errors(tmp_path):
    meta = _meta(16)
    meta.extra["k"] = 1
    write_metadata(str(tmp_path), meta)
    back = read_metadata(str(tmp_path))
    assert (
        back.tile_size == 16 and back.sar_normalization == meta.sar_normalization and back.extra == {"k": 1}
    )
    with pytest.raises(StoreError, match="no tile store"):
        read_metadata(str(tmp_path / "missing"))
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        read_metadata(str(tmp_path))


def test_incompatible_metadata_named():
    a = _meta(32)
    b = _meta(64)
    with pytest.raises(StoreError, match="tile_size=32.*64"):
        a.check_compatible(b, "the store X")
