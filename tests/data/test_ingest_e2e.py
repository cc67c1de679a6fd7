"""End-to-end ingest, synth and info on the shared local Ray cluster, local disk and S3 (moto on loopback)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from s2o_platform import storage
from s2o_platform.cli import app
from s2o_platform.data.ingest import format_summary, run_ingest
from s2o_platform.data.store import decode_valid, read_columns, read_metadata, read_tiles, split_counts
from s2o_platform.data.synth_writer import run_synth
from tests.fixtures import (
    optical_png,
    sar_png,
    truncate,
    write_geotiff_pair,
    write_paired_folders,
    write_png,
    write_sen12,
)

pytestmark = pytest.mark.ray
runner = CliRunner()


@pytest.fixture
def messy_source(tmp_path):
    """Good pairs plus one of every bad-input case, in the sar/ + optical/ layout."""
    root = tmp_path / "src"
    write_paired_folders(root, n=4, size=64)
    rng = np.random.default_rng(9)
    truncate(write_png(root / "sar" / "truncated.png", sar_png(rng, 64)))
    write_png(root / "optical" / "truncated.png", optical_png(rng, 64))
    write_png(root / "sar" / "mismatch.png", sar_png(rng, 64))
    write_png(root / "optical" / "mismatch.png", optical_png(rng, 48))
    write_png(root / "sar" / "grey_optical.png", sar_png(rng, 64))
    write_png(root / "optical" / "grey_optical.png", sar_png(rng, 64))
    write_png(root / "sar" / "no_partner.png", sar_png(rng, 64))
    write_png(root / "optical" / "no_sar.png", optical_png(rng, 64))
    (root / "sar" / "garbage.png").write_bytes(b"not an image at all")
    write_png(root / "optical" / "garbage.png", optical_png(rng, 64))
    # A GeoTIFF scene whose SAR is all NaN.
    sar, _ = write_geotiff_pair(root, name="nan_scene", rows=64, cols=64)
    import rasterio

    with rasterio.open(sar, "r+") as dst:
        dst.write(np.full((1, 64, 64), np.nan, np.float32))
    return root


def test_ingest_isolates_bad_items_and_does_not_duplicate(ray_cluster, messy_source, tmp_path):
    store = str(tmp_path / "store")
    summary = run_ingest([str(messy_source), str(tmp_path / "missing")], store, tile_size=32, progress=False)
    assert summary.pairs_ingested == 4
    assert summary.total_written == 16  # 4 pairs x 4 tiles
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in summary.skipped}
    assert "cannot decode" in reasons["truncated.png"]
    assert "size mismatch" in reasons["mismatch.png"]
    assert "wrong band count for optical" in reasons["grey_optical.png"]
    assert reasons["no_partner.png"] == "SAR file without its optical partner"
    assert reasons["no_sar.png"] == "optical file without its SAR partner"
    assert "cannot decode" in reasons["garbage.png"]
    assert "entirely nodata" in reasons["nan_scene.tif"]
    assert "unreadable source" in reasons["missing"]
    assert sum(split_counts(store).values()) == 16

    again = run_ingest([str(messy_source)], store, tile_size=32, progress=False)
    assert again.total_written == 0 and again.tiles_already_present == 16
    ids = read_columns(store, ["tile_id"]).column("tile_id").to_pylist()
    assert len(ids) == len(set(ids)) == 16


def test_split_is_by_scene_and_readable_by_ray_data(ray_cluster, tmp_path):
    src = write_sen12(tmp_path / "sen12", {f"ROIs1158_spring_{n}": 3 for n in range(10, 20)}, size=64)
    store = str(tmp_path / "store")
    run_ingest([str(src)], store, tile_size=32, test_fraction=0.2, val_fraction=0.1, seed=1, progress=False)
    table = read_columns(store, ["scene_id", "split"])
    scene_splits = {}
    for scene, split in zip(table.column("scene_id").to_pylist(), table.column("split").to_pylist()):
        scene_splits.setdefault(scene, set()).add(split)
    assert all(len(s) == 1 for s in scene_splits.values())  # never split a scene
    assert sorted(next(iter(s)) for s in scene_splits.values()).count("test") == 2
    ds = read_tiles(store, "train", columns=["tile_id", "split"])
    rows = ds.take_all()
    assert rows and {r["split"] for r in rows} == {"train"}
    assert len(rows) == split_counts(store)["train"]


def test_store_rejects_other_tile_size(ray_cluster, tmp_path):
    src = write_paired_folders(tmp_path / "src", n=1, size=64)
    store = str(tmp_path / "store")
    run_ingest([str(src)], store, tile_size=32, progress=False)
    with pytest.raises(ValueError, match="tile_size=32"):
        run_ingest([str(src)], store, tile_size=64, progress=False)


def test_cli_ingest_exit_codes_and_summary(ray_cluster, tmp_path, messy_source):
    store = tmp_path / "store"
    result = runner.invoke(
        app,
        [
            "data",
            "ingest",
            str(messy_source),
            "--out",
            str(store),
            "--tile-size",
            "32",
            "--summary-json",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "pairs ingested:         4" in result.stdout and "truncated.png" in result.stdout
    assert json.loads((tmp_path / "s.json").read_text())["pairs_ingested"] == 4

    bad = tmp_path / "bad"
    (bad / "sar").mkdir(parents=True)
    (bad / "optical").mkdir()
    (bad / "sar" / "x.png").write_bytes(b"junk")
    (bad / "optical" / "x.png").write_bytes(b"junk")
    result = runner.invoke(
        app, ["data", "ingest", str(bad), "--out", str(tmp_path / "s2"), "--tile-size", "32"]
    )
    assert result.exit_code == 1
    assert "nothing valid to ingest" in result.stderr and "cannot decode" in result.stderr

    result = runner.invoke(
        app, ["data", "ingest", str(bad), "--out", str(tmp_path / "s3"), "--set", "tile_sise=3"]
    )
    assert result.exit_code == 2 and "unknown key 'tile_sise'" in result.stderr


def test_ingest_real_samples(ray_cluster, real_data, tmp_path):
    store = str(tmp_path / "real")
    site = real_data / "geotiff" / "ssl4eo_s12_0000200"
    summary = run_ingest([str(real_data), str(site)], store, tile_size=64, progress=False)
    assert summary.skipped == []
    assert summary.pairs_ingested == 12  # 11 SEN1-2 pairs + the SSL4EO-S12 site
    assert summary.total_written > 100
    assert summary.scales["uint8"] == 11 and summary.scales["db"] == 1
    meta = read_metadata(store)
    assert meta.tile_size == 64 and meta.sar_normalization.clip_db == (-25.0, 0.0)


def test_synth_store_scenes_and_info(ray_cluster, tmp_path):
    store = tmp_path / "synth"
    scenes = tmp_path / "scenes"
    summary = run_synth(
        str(store),
        pairs=100,
        size=32,
        seed=4,
        scenes_dir=str(scenes),
        n_scene_files=3,
        scene_size=128,
        progress=False,
    )
    assert sum(summary.tiles.values()) == 100
    assert summary.baselines["class_oracle"] > summary.baselines["mean_colour"] + 6
    meta = read_metadata(str(store))
    assert meta.extra["synthetic"]["baseline_psnr"] == summary.baselines
    import rasterio

    with rasterio.open(summary.scene_files[0]) as src:
        assert src.crs.to_epsg() == 32631 and src.width == 128 and src.dtypes[0] == "float32"
    # The scene folder is itself an ingest source (sar/ + optical/); the three encodings are detected.
    ingested = run_ingest([str(scenes)], str(tmp_path / "from_scenes"), tile_size=32, progress=False)
    assert ingested.pairs_ingested == 3 and set(ingested.scales) == {"db", "linear", "dn"}
    assert ingested.windows_skipped  # the nodata corner
    assert ingested.heavy_losses == []  # one corner window of 16 per scene: no warning
    # 64 px windows: the corner triangle (136 px) is 3% of its window, under --max-nodata 0.1: kept, masked.
    coarse = run_ingest([str(scenes)], str(tmp_path / "coarse"), tile_size=64, progress=False)
    assert (
        coarse.windows_masked == 3
        and not coarse.windows_skipped
        and "windows kept masked:    3" in format_summary(coarse)
    )
    masks = [
        decode_valid(v, 64)
        for v in read_columns(str(tmp_path / "coarse"), ["valid"]).column("valid").to_pylist()
        if v
    ]
    assert len(masks) == 3 and all((~m).sum() == 136 for m in masks)
    # With --max-nodata 0 the corner windows go, a quarter of each scene's: each scene is named in a warning.
    strict = run_ingest([str(scenes)], str(tmp_path / "strict"), tile_size=64, progress=False, max_nodata=0.0)
    lost = {Path(loss["path"]).name: (loss["lost"], loss["windows"]) for loss in strict.heavy_losses}
    assert len(lost) == 3 and set(lost.values()) == {(1, 4)}, lost
    assert "warning: " in format_summary(strict) and "lost 1 of its 4 windows" in format_summary(strict)

    # Same seed -> same tiles: a second synth into the same store adds nothing.
    again = run_synth(str(store), pairs=100, size=32, seed=4, progress=False)
    assert sum(split_counts(str(store)).values()) == 100 and sum(again.tiles.values()) == 100

    result = runner.invoke(app, ["data", "info", str(store)])
    assert result.exit_code == 0, result.output
    assert "tile size:      32 px" in result.stdout and "class oracle" in result.stdout
    result = runner.invoke(app, ["data", "info", str(store), "--json"])
    info = json.loads(result.stdout)
    assert info["total_rows"] == 100 and info["schema"]["sar"] == "binary"
    result = runner.invoke(app, ["data", "info", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no tile store" in result.stderr


def test_s3_ingest_and_read_through_moto(ray_cluster, s3_endpoint, tmp_path):
    options = storage.StorageOptions(s3_endpoint=s3_endpoint)
    fs, _ = storage.resolve("s3://s2o-test/x", options)
    # Sources on S3 too: upload a small paired-folder tree.
    local = write_paired_folders(tmp_path / "src", n=3, size=64)
    for path in local.rglob("*.png"):
        with fs.open_output_stream(f"s2o-test/src/{path.relative_to(local)}") as f:
            f.write(path.read_bytes())
    store = "s3://s2o-test/stores/one"
    summary = run_ingest(["s3://s2o-test/src"], store, tile_size=32, options=options, progress=False)
    assert summary.pairs_ingested == 3 and summary.total_written == 12, summary.skipped
    assert read_metadata(store, options).tile_size == 32
    rows = read_tiles(store, options=options, columns=["tile_id", "sar_path"]).take_all()
    assert len(rows) == 12 and rows[0]["sar_path"].startswith("s3://s2o-test/src/sar/")
    # A GeoTIFF pair on S3 (opened through the filesystem's random-access file: ranged reads, not a download)
    # gives the same tiles as the same pair on local disk.
    from tests.fixtures import write_geotiff_pair

    geo = tmp_path / "geo"
    write_geotiff_pair(geo, name="scene", rows=64, cols=64, seed=3)
    for path in geo.rglob("*.tif"):
        with fs.open_output_stream(f"s2o-test/geo/{path.relative_to(geo)}") as f:
            f.write(path.read_bytes())
    on_s3 = run_ingest(
        ["s3://s2o-test/geo"], "s3://s2o-test/stores/geo", tile_size=32, options=options, progress=False
    )
    on_disk = run_ingest([str(geo)], str(tmp_path / "geo-store"), tile_size=32, progress=False)
    assert on_s3.total_written == on_disk.total_written == 4 and on_s3.skipped == []
    s3_ids = sorted(
        r["tile_id"]
        for r in read_tiles("s3://s2o-test/stores/geo", options=options, columns=["tile_id"]).take_all()
    )
    assert s3_ids == sorted(
        r["tile_id"] for r in read_tiles(str(tmp_path / "geo-store"), columns=["tile_id"]).take_all()
    )
    result = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            "s3://s2o-test/stores/synth",
            "--pairs",
            "40",
            "--s3-endpoint",
            s3_endpoint,
        ],
    )
    assert result.exit_code == 0, result.output
    counts = split_counts("s3://s2o-test/stores/synth", options)
    assert sum(counts.values()) == 40 and all(counts.values())  # 3 scenes: one per split


def test_real_sen12_pairs_with_black_pixels_keep_every_tile(ray_cluster, real_data, tmp_path):
    """Four of the real SEN1-2 optical images hold pure-black pixels (dark water and shadow clipped by the
    8-bit stretch: 2, 50, 1 and 344 of 65,536). They are ground, not fill: every 256 px pair gives its tile."""
    from PIL import Image

    optical = sorted((real_data / "optical").glob("*.png"))
    black = [p.name for p in optical if (np.asarray(Image.open(p))[..., :3] == 0).all(-1).any()]
    assert len(black) >= 4  # the case this test is about is present
    summary = run_ingest(
        [str(real_data)],
        str(tmp_path / "real256"),
        tile_size=256,
        test_fraction=0.5,
        val_fraction=0.0,
        progress=False,
    )
    assert summary.skipped == [] and dict(summary.windows_skipped) == {}
    assert summary.total_written == len(optical) == sum(split_counts(str(tmp_path / "real256")).values())


def test_a_pair_failing_midway_contributes_no_tile(tmp_path):
    """A 1024 px GeoTIFF pair whose SAR (a COG: header and overviews first) is cut off at 75% fails while its
    windows are being read, after some of its shards were full: none of its rows may reach the store, and
    the summary equals the store."""
    import json as _json

    import rasterio

    from s2o_platform.data.ingest import ingest_packet
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.sources import PairSource
    from s2o_platform.data.store import STAGING_DIR, StoreMetadata, write_metadata
    from tests.fixtures import write_geotiff_pair

    src = tmp_path / "src"
    good_sar, good_opt = write_geotiff_pair(src, name="good", rows=64, cols=64, seed=1)
    bad_sar, bad_opt = write_geotiff_pair(src, name="cut", rows=1024, cols=1024, seed=2)
    with rasterio.open(bad_sar) as raster:
        profile, data = raster.profile, raster.read()
    for key in ("tiled", "blockxsize", "blockysize", "interleave"):
        profile.pop(key, None)
    with rasterio.open(
        tmp_path / "cog.tif", "w", **{**profile, "driver": "COG", "compress": "deflate", "blocksize": 128}
    ) as cog:
        cog.write(data)
    shutil.move(tmp_path / "cog.tif", bad_sar)
    truncate(bad_sar, keep_fraction=0.75)
    store = tmp_path / "store"
    metadata = StoreMetadata(tile_size=32, sar_channels=1, sar_normalization=SarNormalization())
    write_metadata(str(store), metadata)
    items = [
        {
            **PairSource(sar=str(s), optical=str(o), scene_id=name, source_kind="folders").to_dict(),
            "split": "train",
        }
        for s, o, name in ((bad_sar, bad_opt, "cut"), (good_sar, good_opt, "good"))
    ]
    result = ingest_packet(
        {"pairs": [_json.dumps(items)]},
        str(store),
        {"tile_size": 32, "stride": None, "sar_scale": "auto", "sar_band": None},
        metadata.to_dict(),
        {},
        None,
        max_rows_per_shard=8,
    )
    status = dict(zip(result["path"], result["status"]))
    assert status[str(bad_sar)] == "skipped" and status[str(good_sar)] == "ok"
    assert "Read failed" in dict(zip(result["path"], result["reason"]))[str(bad_sar)]
    assert dict(zip(result["path"], result["written"])) == {str(bad_sar): 0, str(good_sar): 4}
    rows = read_columns(str(store), ["sar_path"]).column("sar_path").to_pylist()
    assert rows == [str(good_sar)] * 4
    assert not (store / STAGING_DIR).exists() or not any((store / STAGING_DIR).iterdir())


def test_an_undecodable_csv_is_named_and_the_rest_is_ingested(ray_cluster, tmp_path):
    good = write_paired_folders(tmp_path / "good", n=2, size=64)
    latin1 = tmp_path / "lists.csv"
    latin1.write_bytes("sar,optical\n/data/caf\xe9_vv.tif,/data/caf\xe9_rgb.tif\n".encode("latin-1"))
    result = runner.invoke(
        app, ["data", "ingest", str(good), str(latin1), "--out", str(tmp_path / "store"), "--tile-size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert f"{latin1}: cannot read this source: not UTF-8 text (byte 0xe9 at offset 21)" in result.output
    assert sum(split_counts(str(tmp_path / "store")).values()) == 8
