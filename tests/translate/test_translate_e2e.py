"""`s2o translate` end to end on the shared Ray cluster: real GeoTIFFs in, COGs out (checked with
rio-cogeo), resume, per-scene errors, the real Sentinel-1 samples, and s3:// through moto."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from s2o_platform.data.synth_writer import write_scene_geotiffs
from s2o_platform.translate.manifest import MANIFEST_FILE
from tests.fixtures import truncate
from tests.translate.helpers import assert_same_grid_and_nodata, translate, valid_mask

pytestmark = pytest.mark.ray


def test_scenes_become_georeferenced_cogs_and_a_rerun_skips_them(scenes, bundles, tmp_path):
    out = tmp_path / "out"
    result = translate(scenes, "--model", bundles["student"], "--out", out, "--steps", 1, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    assert "3 scene(s) translated, 0 skipped" in result.output
    for source in sorted(scenes.glob("*.tif")):
        assert_same_grid_and_nodata(source, out / source.name)
    lines = [json.loads(rec) for rec in (out / MANIFEST_FILE).read_text().splitlines()]
    assert {rec["status"] for rec in lines} == {"done"} and len(lines) == 3
    assert {rec["scale"].split()[0] for rec in lines} == {
        "db",
        "linear",
        "dn",
    }  # chosen per scene, and said why
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}

    again = translate(scenes, "--model", bundles["student"], "--out", out, "--steps", 1)
    assert again.exit_code == 0, again.output
    assert "0 scene(s) translated, 3 skipped" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == mtimes
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # no partial files left behind


def border_contrast(image: np.ndarray, tile: int, overlap: int) -> float:
    """Mean |horizontal step| on columns where one window ends and the next begins, over the mean elsewhere."""
    steps = np.abs(np.diff(image.astype(np.float32), axis=2)).mean(axis=(0, 1))
    stride = tile - overlap
    borders = (
        [c - 1 for c in range(stride, image.shape[2] - 1, stride)]
        if overlap == 0
        else [c + overlap // 2 - 1 for c in range(stride, image.shape[2] - tile, stride)]
    )
    interior = np.setdiff1d(np.arange(len(steps)), borders)
    return float(steps[borders].mean() / steps[interior].mean())


def test_blending_leaves_no_seams(scenes, bundles, tmp_path):
    """pix2pix (untrained, deterministic) behaves differently at tile edges (zero padding): without overlap
    the tile grid shows in the statistics of the border columns; blended, borders look like the interior."""
    source = scenes / "scene_000_db.tif"
    single = tmp_path / "one"
    single.mkdir()
    shutil.copy(source, single / source.name)
    contrast = {}
    for overlap in (0, 16):
        out = tmp_path / f"o{overlap}"
        result = translate(single, "--model", bundles["gan"], "--out", out, "--overlap", overlap)
        assert result.exit_code == 0, result.output
        with rasterio.open(out / source.name) as ds:
            image = ds.read(
                window=rasterio.windows.Window(0, 40, ds.width, 60)
            )  # rows clear of the nodata corner
        contrast[overlap] = border_contrast(image, 32, overlap)
    seam = {k: abs(1.0 - v) for k, v in contrast.items()}
    assert seam[0] > 0.2, contrast  # the check can see the tile grid...
    assert seam[16] < 0.5 * seam[0], contrast  # ...and blending removes most of it


def test_a_bad_scene_is_recorded_and_the_others_complete(scenes, bundles, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(scenes, mixed)
    truncate(shutil.copy(mixed / "scene_000_db.tif", mixed / "broken.tif"), 0.3)
    with (
        pytest.warns(rasterio.errors.NotGeoreferencedWarning),  # no CRS, no transform: as meant
        rasterio.open(
            mixed / "plain.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="float32"
        ) as ds,
    ):
        ds.write(np.zeros((1, 64, 64), np.float32))
    with rasterio.open(mixed / "scene_000_db.tif") as src:
        profile = {**src.profile, "count": 3}
        with rasterio.open(mixed / "rgb.tif", "w", **profile) as ds:
            ds.write(np.zeros((3, src.height, src.width), np.float32))
    out = tmp_path / "out"
    result = translate(mixed, "--model", bundles["student"], "--out", out, "--steps", 1)
    assert result.exit_code == 1
    assert "3 scene(s) translated, 0 skipped (already done), 3 failed" in result.output
    records = {
        Path(json.loads(rec)["scene"]).name: json.loads(rec)
        for rec in (out / MANIFEST_FILE).read_text().splitlines()
    }
    assert records["plain.tif"]["status"] == "failed" and "no CRS" in records["plain.tif"]["reason"]
    assert "band" in records["rgb.tif"]["reason"]
    assert records["broken.tif"]["status"] == "failed" and records["broken.tif"]["reason"]
    assert not (out / "broken.tif").exists() and not (out / "plain.tif").exists()
    for name in ("scene_000_db.tif", "scene_001_linear.tif", "scene_002_dn.tif"):
        assert records[name]["status"] == "done"
        assert_same_grid_and_nodata(mixed / name, out / name)


def test_bad_arguments_fail_before_any_scene(scenes, bundles, tmp_path):
    for args, words in [
        (["--overlap", "32"], "overlap"),
        (["--steps", "9"], "1..8"),
        (["--dtype", "fp8"], "--dtype"),
        (["--uncertainty", "1"], "at least 2 samples"),
        (["--uncertainty", "3", "--output", "median"], "mean|sample"),
    ]:
        result = translate(scenes, "--model", bundles["student"], "--out", tmp_path / "o", *args)
        assert result.exit_code == 2 and words in result.output, result.output
    result = translate(scenes, "--model", bundles["gan"], "--out", tmp_path / "o", "--uncertainty", "3")
    assert result.exit_code == 2 and "deterministic" in result.output, result.output
    result = translate(tmp_path / "nothing-here", "--model", bundles["student"], "--out", tmp_path / "o")
    assert result.exit_code == 2 and "SOURCE" in result.output
    assert not (tmp_path / "o").exists()


def test_an_uncertainty_band_from_several_samples(scenes, bundles, tmp_path):
    """--uncertainty 3: a fourth band, the spread of three samples, nodata where the image is; --output sample
    keeps the RGB of a plain run (its first sample draws the plain run's noise)."""
    from rio_cogeo.cogeo import cog_validate

    runs = {
        "plain": [],
        "spread": ["--uncertainty", "3"],
        "sample": ["--uncertainty", "3", "--output", "sample"],
    }
    for name, extra in runs.items():
        result = translate(
            scenes, "--model", bundles["student"], "--out", tmp_path / name, "--steps", 2, *extra
        )
        assert result.exit_code == 0, result.output
    for source in sorted(scenes.glob("*.tif")):
        valid = valid_mask(source)
        with rasterio.open(tmp_path / "spread" / source.name) as ds:
            assert ds.count == 4 and ds.descriptions[3].startswith("uncertainty"), ds.descriptions
            assert ds.colorinterp[3] == rasterio.enums.ColorInterp.undefined  # data, not alpha
            spread = ds.read(4)
        assert (spread[~valid] == 0).all() and (spread[valid] >= 1).all()
        assert spread[valid].mean() > 2  # an untrained student's samples disagree everywhere
        assert cog_validate(str(tmp_path / "spread" / source.name))[0]
        with (
            rasterio.open(tmp_path / "plain" / source.name) as plain,
            rasterio.open(tmp_path / "sample" / source.name) as sample,
        ):
            assert plain.count == 3
            # the same noise per tile; batches of 32 vs 30 tiles may round a float differently, by one level at most
            difference = np.abs(plain.read().astype(int) - sample.read([1, 2, 3]).astype(int))
            assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_real_sentinel1_geotiffs(real_data, bundles, tmp_path):
    sources = sorted((real_data / "geotiff" / "spatialist").glob("*.tif")) + sorted(
        (real_data / "geotiff" / "opera_rtc_s1").glob("*_VV.tif")
    )
    if not sources:
        pytest.skip("no Sentinel-1 GeoTIFFs in ../shared/data/real/geotiff")
    listing = tmp_path / "scenes.txt"
    listing.write_text("\n".join(map(str, sources)) + "\n")
    out = tmp_path / "out"
    result = translate(
        listing,
        "--model",
        bundles["student"],
        "--out",
        out,
        "--steps",
        1,
        "--batch-size",
        64,
        "--dtype",
        "bf16",
    )
    assert result.exit_code == 0, result.output
    for source in sources:
        assert_same_grid_and_nodata(source, out / source.name)


def test_s3_source_and_destination(s3_endpoint, scenes, bundles, tmp_path, monkeypatch):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.upload_file(str(scenes / "scene_001_linear.tif"), "s2o-test", "archive/2024/scene_001_linear.tif")
    args = ("s3://s2o-test/archive/", "--model", bundles["student"], "--out", "s3://s2o-test/optical")
    args += ("--steps", 1, "--s3-endpoint", s3_endpoint)
    result = translate(*args)
    assert result.exit_code == 0, result.output
    local = tmp_path / "scene.tif"
    client.download_file("s2o-test", "optical/2024/scene_001_linear.tif", str(local))
    assert_same_grid_and_nodata(scenes / "scene_001_linear.tif", local)
    manifest = client.get_object(Bucket="s2o-test", Key=f"optical/{MANIFEST_FILE}")["Body"].read().decode()
    assert json.loads(manifest.splitlines()[0])["output"] == "s3://s2o-test/optical/2024/scene_001_linear.tif"

    # a re-run finds the output and its quicklooks in one listing of the bucket's prefix: nothing redone (a
    # quicklook found missing would be made again, over the marker put in its place)
    looks = [f"optical/2024/scene_001_linear{suffix}" for suffix in (".quicklook.png", ".sar.png")]
    for key in looks:
        assert client.head_object(Bucket="s2o-test", Key=key)["ContentLength"] > 100  # the first run's PNG
        client.put_object(Bucket="s2o-test", Key=key, Body=b"kept")
    from s2o_platform import storage

    asked, exists = [], storage.exists
    monkeypatch.setattr(storage, "exists", lambda fs, path: asked.append(path) or exists(fs, path))
    again = translate(*args)
    assert again.exit_code == 0 and "0 scene(s) translated, 1 skipped" in again.output, again.output
    assert [client.get_object(Bucket="s2o-test", Key=key)["Body"].read() for key in looks] == [b"kept"] * 2
    assert not [p for p in asked if p.endswith((".tif", ".png"))], asked  # no HEAD per output or quicklook


def test_tile_store_split_to_parquet(synth_store_32, bundles, tmp_path):
    """Parquet in, Parquet out: the test split's tiles, predicted by the (deterministic) pix2pix bundle,
    exactly as translating them in this process gives."""
    import pyarrow.parquet as pq

    from s2o_platform.bundle import load_bundle
    from s2o_platform.data.normalization import model_to_uint8
    from s2o_platform.data.store import decode_batch, split_counts
    from s2o_platform.inference import translate_tiles

    out = tmp_path / "predicted"
    result = translate(
        synth_store_32,
        "--model",
        bundles["gan"],
        "--out",
        out,
        "--split",
        "test",
        "--batch-size",
        8,
        "--dtype",
        "fp32",
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).sort_by("tile_id")
    assert table.num_rows == split_counts(synth_store_32)["test"]
    first = {
        c: table.column(c).to_numpy(zero_copy_only=False)[:3] for c in ("tile_id", "predicted", "optical")
    }
    store = pq.ParquetDataset(str(Path(synth_store_32) / "test")).read().sort_by("tile_id").slice(0, 3)
    tiles = decode_batch({c: store.column(c).to_numpy(zero_copy_only=False) for c in store.column_names})
    assert list(first["tile_id"]) == list(tiles["tile_id"])
    expected = model_to_uint8(translate_tiles(load_bundle(bundles["gan"]), tiles["sar"])).transpose(
        0, 2, 3, 1
    )
    for k in range(3):
        got = np.frombuffer(first["predicted"][k], np.uint8).reshape(32, 32, 3)
        assert np.abs(got.astype(int) - expected[k]).max() <= 1  # same network; float rounding only


def test_a_run_killed_midway_resumes_to_the_same_outputs_without_partial_files(
    ray_cluster, bundles, tmp_path
):
    """Kill the driver once the first scene is written; the same command again finishes the rest, and every
    output equals an uninterrupted run's byte for byte (each tile's noise is keyed by its scene and window,
    not by the scene's position in the run, which shifts when finished scenes are skipped)."""
    import signal
    import subprocess

    from tests.translate.helpers import held_translate_command, wait_for, wait_for_free_cpus

    archive = tmp_path / "archive"
    write_scene_geotiffs(str(archive), 6, 160, seed=5)
    sources = sorted((archive / "sar").glob("*.tif"))
    out = tmp_path / "out"
    manifest = out / MANIFEST_FILE
    held, log_path = tmp_path / "held", tmp_path / "first.log"
    free_before = ray_cluster.available_resources().get("CPU", 0)
    command = held_translate_command(
        held,
        tmp_path / "never",
        archive / "sar",
        bundles["student"],
        out,
        ray_cluster,
        "--steps",
        4,
        "--batch-size",
        8,
    )
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(held.exists, "first scene recorded as done", proc, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = [
        json.loads(rec)["scene"]
        for rec in manifest.read_text().splitlines()
        if json.loads(rec)["status"] == "done"
    ]
    assert done_before == [held.read_text()]  # killed with exactly one scene done, five to go
    wait_for_free_cpus(ray_cluster, free_before)
    result = translate(
        archive / "sar", "--model", bundles["student"], "--out", out, "--steps", 4, "--batch-size", 8
    )
    assert result.exit_code == 0, result.output
    assert f"{len(sources) - 1} scene(s) translated, 1 skipped" in result.output
    assert sorted(p.name for p in out.glob("*.tif")) == [s.name for s in sources]
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
    for source in sources:
        assert_same_grid_and_nodata(source, out / source.name)
    straight = tmp_path / "straight"
    result = translate(
        archive / "sar", "--model", bundles["student"], "--out", straight, "--steps", 4, "--batch-size", 8
    )
    assert result.exit_code == 0, result.output
    import rasterio

    for source in sources:
        with (
            rasterio.open(out / source.name) as resumed,
            rasterio.open(straight / source.name) as uninterrupted,
        ):
            np.testing.assert_array_equal(resumed.read(), uninterrupted.read(), err_msg=source.name)


def test_scenes_cut_off_are_recorded_and_the_others_complete(scenes, bundles, tmp_path):
    """COGs whose header and overviews are intact but whose full-resolution data is cut at 75%: a 640 px one
    fails in its checks (the scale sample reads full resolution), a 1024 px one passes them (its sample
    comes from an overview) and fails partway through its windows. Each is recorded as failed with its
    reason, nothing partial is left, and the good scenes are written."""
    from tests.fixtures import sar_db_scene

    archive = tmp_path / "archive"
    shutil.copytree(scenes, archive)
    for name, side in (("cut_checks", 640), ("cut_midway", 1024)):
        with rasterio.open(
            archive / f"{name}.tif",
            "w",
            driver="COG",
            width=side,
            height=side,
            count=1,
            dtype="float32",
            crs="EPSG:32631",
            transform=rasterio.transform.from_origin(600_000, 4_800_000, 10, 10),
            compress="deflate",
            blocksize=128,
        ) as dst:
            dst.write(sar_db_scene(np.random.default_rng(4), side, side))
        truncate(archive / f"{name}.tif", keep_fraction=0.75)
    out = tmp_path / "out"
    result = translate(archive, "--model", bundles["gan"], "--out", out, "--batch-size", 64)
    assert result.exit_code == 1, result.output
    assert "3 scene(s) translated" in result.output and "2 failed" in result.output, result.output
    assert re.search(r"failed: .*cut_checks\.tif: cannot read it: RasterioIOError", result.output), (
        result.output
    )
    assert re.search(r"failed: .*cut_midway\.tif: reading row \d+: RasterioIOError", result.output), (
        result.output
    )
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(p.name for p in scenes.glob("*.tif"))
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
