"""Archives as remote-sensing teams keep them, through `s2o translate` end to end on the shared Ray cluster: STAC
in and out (an ItemCollection of the real Sentinel-1 GeoTIFFs in ../shared/data/real with relative and absolute
hrefs, VV chosen among VV and VH by `sar:polarizations`, items that cannot be translated, a catalog on s3:// (moto)
walked through its child collection; DEST's catalog read back with pystac), the gallery in a real browser, and a
scene referenced by ground control points warped onto a regular grid."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from PIL import Image

from s2o_platform.translate.manifest import DATETIME_FROM_FILE, DATETIME_NONE, MANIFEST_FILE
from tests.translate.helpers import translate

pytestmark = pytest.mark.ray

SPATIALIST = "geotiff/spatialist/S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"
OPERA = "geotiff/opera_rtc_s1/OPERA_L2_RTC-S1_T137-292319-IW2_20250102T015901Z_20250102T190143Z_S1A_30_v1.0_{}.tif"
SSL4EO = (
    "geotiff/ssl4eo_s12_0000200/s1/S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457/{}.tif"
)


def sar_asset(href: str, polarisation: str | None = None) -> pystac.Asset:
    extra = {"sar:polarizations": [polarisation]} if polarisation else {}
    return pystac.Asset(href=href, media_type=pystac.MediaType.GEOTIFF, roles=["data"], extra_fields=extra)


def item(item_id: str, when: str, assets: dict[str, pystac.Asset]) -> pystac.Item:
    made = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [0.0, 0.0]},
        bbox=[0.0, 0.0, 0.0, 0.0],
        datetime=datetime.fromisoformat(when).replace(tzinfo=timezone.utc),
        properties={},
    )
    for key, asset in assets.items():
        made.add_asset(key, asset)
    return made


@pytest.fixture
def real_collection(real_data, tmp_path):
    """An ItemCollection file of five items: three real Sentinel-1 scenes, one without a SAR asset, one whose
    asset is gone. The OPERA pair sits beside the file with relative hrefs; the others are absolute."""
    folder = tmp_path / "stac-in"
    (folder / "opera").mkdir(parents=True)
    for pol in ("VV", "VH"):
        shutil.copy(real_data / OPERA.format(pol), folder / "opera" / f"{pol}.tif")
    items = [
        item(
            "s1a-20150309-camargue",
            "2015-03-09T17:30:17",
            {"vv": sar_asset(str(real_data / SPATIALIST), "VV")},
        ),
        item(
            "opera-t137-292319",
            "2025-01-02T01:59:01",
            {"VH": sar_asset("./opera/VH.tif", "VH"), "VV": sar_asset("./opera/VV.tif", "VV")},
        ),
        item(
            "ssl4eo-0000200",
            "2020-06-07T01:08:00",
            {
                "vh": sar_asset(str(real_data / SSL4EO.format("VH"))),
                "vv": sar_asset(str(real_data / SSL4EO.format("VV"))),
            },
        ),  # no polarisation metadata: the key says VV
        item(
            "metadata-only",
            "2021-01-01T00:00:00",
            {
                "thumbnail": pystac.Asset("./thumb.png", media_type="image/png", roles=["thumbnail"]),
                "manifest": pystac.Asset("./manifest.safe", media_type="application/xml", roles=["metadata"]),
            },
        ),
        item("asset-gone", "2021-01-02T00:00:00", {"vv": sar_asset("./gone/VV.tif", "VV")}),
    ]
    path = folder / "items.geojson.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    return path


def test_an_item_collection_of_real_sentinel1_scenes_becomes_a_stac_catalog_and_a_gallery(
    real_collection, bundles, tmp_path
):
    out = tmp_path / "out"
    args = ("--model", bundles["student"], "--out", out, "--steps", 1, "--uncertainty", 2, "--dtype", "bf16")
    result = translate(real_collection, *args)
    assert result.exit_code == 1, result.output  # two items could not be translated; the three others are
    assert "3 scene(s) translated" in result.output and "2 failed" in result.output
    records = {r["scene"]: r for r in map(json.loads, (out / MANIFEST_FILE).read_text().splitlines())}
    failed = {r["scene"]: r["reason"] for r in records.values() if r["status"] == "failed"}
    assert any("metadata-only" in reason and "--asset" in reason for reason in failed.values())
    assert any(scene.endswith("gone/VV.tif") for scene in failed)
    done = {r["output"].rsplit("/", 1)[1]: r for r in records.values() if r["status"] == "done"}
    assert sorted(done) == ["opera-t137-292319.tif", "s1a-20150309-camargue.tif", "ssl4eo-0000200.tif"]
    assert done["opera-t137-292319.tif"]["scene"].endswith("opera/VV.tif")  # VV by sar:polarizations, not VH
    assert done["ssl4eo-0000200.tif"]["scene"].endswith("D457/VV.tif")  # VV by the asset's key

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    assert sorted(items) == ["opera-t137-292319", "s1a-20150309-camargue", "ssl4eo-0000200"]
    camargue = items["s1a-20150309-camargue"]
    assert camargue.datetime == datetime(2015, 3, 9, 17, 30, 17, tzinfo=timezone.utc)
    cog = camargue.assets["data"].get_absolute_href()
    assert cog == str(out / "s1a-20150309-camargue.tif") and "data" in camargue.assets["data"].roles
    with rasterio.open(cog) as ds:
        assert camargue.properties["proj:code"] == f"EPSG:{ds.crs.to_epsg()}"
        assert camargue.properties["proj:shape"] == [ds.height, ds.width]
        assert camargue.properties["proj:transform"] == pytest.approx(list(ds.transform)[:6])
        west, south, east, north = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    assert camargue.bbox == pytest.approx([west, south, east, north], abs=1e-3)
    assert 4.0 < camargue.bbox[0] < 5.0 and 43.0 < camargue.bbox[1] < 44.0  # the Rhone delta
    source_link = camargue.get_single_link("derived_from")
    assert source_link.get_absolute_href() == str(real_collection)  # the items' home: their collection file
    assert camargue.properties["s2o:stage"] == "student" and camargue.properties["s2o:steps"] == 1
    assert len(camargue.properties["s2o:bundle_sha256"]) == 64
    assert camargue.properties["s2o:uncertainty_band"] is True
    for it in items.values():
        for key in ("quicklook", "sar_quicklook", "uncertainty_quicklook"):
            with Image.open(it.assets[key].get_absolute_href()) as look:
                assert look.format == "PNG" and 0 < max(look.size) <= 384
        with Image.open(it.assets["quicklook"].get_absolute_href()) as look:
            pixels = np.asarray(look.convert("RGBA"))
            assert pixels[..., 3].any() and pixels[..., :3].std() > 1  # not blank
    # links are relative: the catalog can be moved or published as it is
    raw = json.loads((out / "catalog.json").read_text())
    assert all(not link["href"].startswith("/") for link in raw["links"])
    assert json.loads((out / "stac" / "ssl4eo-0000200.json").read_text())["assets"]["data"]["href"] == (
        "../ssl4eo-0000200.tif"
    )
    page = (out / "index.html").read_text()
    assert page.count('class="card"') == 3 and "opera-t137-292319.quicklook.png" in page
    assert "metadata-only" in page and "Errors (2)" in page

    again = translate(real_collection, *args)
    assert "0 scene(s) translated, 3 skipped" in again.output
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert len(list(catalog.get_items(recursive=True))) == 3  # a re-run updates the catalog, no duplicates


def test_a_catalog_on_s3_is_walked_through_its_collection(s3_endpoint, real_data, bundles, tmp_path):
    import boto3

    local = tmp_path / "catalog"
    catalog = pystac.Catalog(id="archive", description="a provider's archive")
    collection = pystac.Collection(
        id="s1-grd",
        description="Sentinel-1",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])
        ),
    )
    catalog.add_child(collection)
    scene = item("s1a-20170309", "2017-03-09T05:43:56", {"measurement": sar_asset("./VV.tif")})
    collection.add_item(scene)
    catalog.normalize_hrefs(str(local))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    item_folder = local / "s1-grd" / "s1a-20170309"
    shutil.copy(
        real_data / SPATIALIST.replace("A_20150309T173017", "D_20170309T054356"), item_folder / "VV.tif"
    )
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "s2o-test", f"stac-archive/{path.relative_to(local)}")
    result = translate(
        "s3://s2o-test/stac-archive/catalog.json",
        "--model",
        bundles["student"],
        "--out",
        "s3://s2o-test/stac-out",
        "--steps",
        1,
        "--s3-endpoint",
        s3_endpoint,
    )
    assert result.exit_code == 0, result.output
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="s2o-test", Prefix="stac-out/")["Contents"]}
    assert {"stac-out/s1a-20170309.tif", "stac-out/catalog.json", "stac-out/stac/s1a-20170309.json"} <= keys
    assert {
        "stac-out/index.html",
        "stac-out/s1a-20170309.quicklook.png",
        "stac-out/s1a-20170309.sar.png",
    } <= keys
    out_item = json.loads(
        client.get_object(Bucket="s2o-test", Key="stac-out/stac/s1a-20170309.json")["Body"].read()
    )
    assert out_item["properties"]["datetime"] == "2017-03-09T05:43:56Z"
    assert out_item["assets"]["data"]["href"] == "../s1a-20170309.tif"
    source_links = [link["href"] for link in out_item["links"] if link["rel"] == "derived_from"]
    assert source_links == ["s3://s2o-test/stac-archive/s1-grd/s1a-20170309/s1a-20170309.json"]


def test_the_gallery_opens_from_disk_in_a_browser(scenes, bundles, browser, tmp_path):
    """DEST/index.html in headless Chromium from file://: every quicklook (SAR, translation, uncertainty heat map)
    loads; a screenshot of the page is not blank."""
    from selenium.webdriver.common.by import By

    from tests.browser import image_state

    out = tmp_path / "out"
    result = translate(scenes, "--model", bundles["student"], "--out", out, "--steps", 1, "--uncertainty", 2)
    assert result.exit_code == 0, result.output
    browser.get((out / "index.html").as_uri())
    cards = browser.find_elements(By.CSS_SELECTOR, "section.card")
    assert len(cards) == 3
    images = image_state(browser, css="section.card img")
    kinds = [i.get_attribute("data-kind") for i in browser.find_elements(By.CSS_SELECTOR, "section.card img")]
    assert kinds.count("uncertainty_quicklook") == 3 and kinds.count("sar_quicklook") == 3
    assert all(i["complete"] and i["width"] == i["height"] == 120 for i in images), images  # 120 px scenes
    shot = tmp_path / "gallery.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(float)
    assert pixels.std() > 20  # the quicklooks are drawn, not a blank page
    assert "Errors (0)" in browser.find_element(By.TAG_NAME, "body").text


def write_gcp_scene(source, path, points_per_side: int = 5) -> None:
    """`source`'s pixels with no CRS or transform, only ground control points in WGS84 (as a Sentinel-1 GRD
    measurement TIFF carries them), taken from its own georeference on a grid of pixel positions."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS
    from rasterio.warp import transform as transform_points

    with rasterio.open(source) as ds:
        pixels, geo, crs, nodata = ds.read(), ds.transform, ds.crs, ds.nodata
        height, width = ds.height, ds.width
    gcps = []
    for row in np.linspace(0, height, points_per_side):
        for col in np.linspace(0, width, points_per_side):
            x, y = geo @ (col, row)
            [lon], [lat] = transform_points(crs, "EPSG:4326", [x], [y])
            gcps.append(GroundControlPoint(row=row, col=col, x=lon, y=lat))
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype=pixels.dtype, nodata=nodata)
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(path, "w", **profile) as out:
        out.write(pixels)
        out.gcps = (gcps, CRS.from_epsg(4326))


def test_a_gcp_referenced_scene_is_warped_onto_the_grid_its_points_give(real_data, bundles, tmp_path):
    from rasterio.crs import CRS
    from rasterio.warp import calculate_default_transform

    source = real_data / SPATIALIST  # EPSG:32631 (UTM 31N), 20 m, nodata -99
    scene = tmp_path / "grd" / "s1a-grd-measurement.tif"
    scene.parent.mkdir()
    write_gcp_scene(source, scene)
    result = translate(scene.parent, "--model", bundles["student"], "--out", tmp_path / "out", "--steps", 1)
    assert result.exit_code == 0, result.output
    assert "ground control points, warped" in result.output
    with rasterio.open(scene) as gcp, rasterio.open(source) as original:
        expected, width, height = calculate_default_transform(
            gcp.gcps[1], CRS.from_epsg(32631), gcp.width, gcp.height, gcps=gcp.gcps[0]
        )
        original_bounds, original_valid = original.bounds, (original.read(1) != original.nodata).mean()
    with rasterio.open(tmp_path / "out" / "s1a-grd-measurement.tif") as out:
        assert out.crs.to_epsg() == 32631  # the UTM zone of the scene centre (the Rhone delta, 4.6 E)
        assert (out.width, out.height) == (width, height)
        assert tuple(out.transform)[:6] == pytest.approx(tuple(expected)[:6])
        assert abs(out.res[0] - 20.0) < 0.5  # the source's ground spacing
        for ours, theirs in zip(out.bounds, original_bounds):
            assert abs(ours - theirs) < 2 * 20.0  # the grid the points describe is the original one
        valid = (out.read(1) > 0).mean()
    assert abs(valid - original_valid) < 0.02  # nodata kept through the warp (and none invented)
    # the pixels too, not only the grid: the warped scene reads as the original it was made from
    from s2o_platform.data.normalization import SarNormalization
    from s2o_platform.data.scene import inspect_scene, read_rows

    def model_pixels_of(path):
        info = inspect_scene(str(path), "x", None, "auto", 32, 8, SarNormalization())
        return info, read_rows(info, 0, info.height)

    warped_info, (warped, warped_valid) = model_pixels_of(scene)
    original_info, (original, original_ok) = model_pixels_of(source)
    assert warped_info.warp is not None and original_info.warp is None
    both = warped_valid & original_ok
    assert both.mean() > 0.8
    assert np.abs(warped[both] - original[both]).mean() < 0.01  # bilinear on the same grid: the same values

    chosen = translate(
        scene,
        "--model",
        bundles["student"],
        "--out",
        tmp_path / "mercator",
        "--steps",
        1,
        "--target-crs",
        "EPSG:3857",
        "--target-resolution",
        "40",
    )
    assert chosen.exit_code == 0, chosen.output
    with rasterio.open(tmp_path / "mercator" / "s1a-grd-measurement.tif") as out:
        assert out.crs.to_epsg() == 3857 and out.res == pytest.approx((40.0, 40.0))
    refused = translate(
        scene, "--model", bundles["student"], "--out", tmp_path / "x", "--target-crs", "EPSG:0"
    )
    assert refused.exit_code != 0 and "--target-crs 'EPSG:0'" in refused.output


def test_a_scenes_tiff_datetime_is_recorded_when_translated_and_kept_when_the_source_is_gone(
    real_data, bundles, tmp_path
):
    """The file's TIFFTAG_DATETIME is read once, when the scene is translated, and kept in the manifest: the
    catalog of a later run states it without opening the source again (here: moved away since). A manifest of an
    older version (no datetime recorded) still gets the tag, read from the file."""
    sar, kept = tmp_path / "sar", tmp_path / "kept.tif"
    sar.mkdir()
    shutil.copy(real_data / SSL4EO.format("VV"), kept)  # real Sentinel-1, 264 x 264 px
    with rasterio.open(kept, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2020:06:07 01:08:00")
    shutil.copy(kept, sar / "tagged.tif")
    out = tmp_path / "out"
    args = ("--model", bundles["student"], "--out", out, "--steps", 1)

    def records() -> dict[str, dict]:
        lines = (out / MANIFEST_FILE).read_text().splitlines()
        return {Path(r["scene"]).name: r for r in map(json.loads, lines)}

    def items() -> dict[str, pystac.Item]:
        return {
            i.id: i for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True)
        }

    acquired = datetime(2020, 6, 7, 1, 8, tzinfo=timezone.utc)
    first = translate(sar, *args)
    assert first.exit_code == 0, first.output
    record = records()["tagged.tif"]
    assert (record["datetime"], record["datetime_source"]) == ("2020:06:07 01:08:00", DATETIME_FROM_FILE)
    assert items()["tagged"].datetime == acquired
    assert "TIFFTAG_DATETIME" in items()["tagged"].properties["s2o:datetime_is"]

    # the tagged scene moved away, an untagged one added: the next run's catalog still dates the first
    (sar / "tagged.tif").unlink()
    shutil.copy(real_data / SSL4EO.format("VH"), sar / "untagged.tif")
    second = translate(sar, *args)
    assert second.exit_code == 0 and "1 scene(s) translated" in second.output, second.output
    assert records()["untagged.tif"]["datetime_source"] == DATETIME_NONE
    tagged, untagged = items()["tagged"], items()["untagged"]
    assert tagged.datetime == acquired and "TIFFTAG_DATETIME" in tagged.properties["s2o:datetime_is"]
    assert untagged.properties["s2o:datetime_is"].startswith("translation time")

    # an older version's manifest (no datetime recorded): the tag is read from the file, which is back
    shutil.copy(kept, sar / "tagged.tif")
    old = [
        {k: v for k, v in r.items() if k not in ("datetime", "datetime_source")} for r in records().values()
    ]
    (out / MANIFEST_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    third = translate(sar, *args)
    assert third.exit_code == 0 and "0 scene(s) translated, 2 skipped" in third.output, third.output
    assert items()["tagged"].datetime == acquired


def test_a_rerun_asks_nothing_per_output_and_its_catalog_equals_one_read_from_the_outputs(
    real_data, bundles, tmp_path, monkeypatch
):
    """On a large archive on S3 a request per output and quicklook on every re-run is thousands of requests:
    which files DEST holds comes from one listing, and the catalog's footprints and projection from the grids
    the manifest kept. What they give equals what reading the outputs gives (a manifest of an older version)."""
    from s2o_platform import storage
    from s2o_platform.data import scene as scene_module

    sar = tmp_path / "sar"
    sar.mkdir()
    for pol in ("VV", "VH"):  # real Sentinel-1 GRD, 264 x 264 px
        shutil.copy(real_data / SSL4EO.format(pol), sar / f"{pol}.tif")
    out = tmp_path / "out"
    args = ("--model", bundles["student"], "--out", out, "--steps", 1, "--uncertainty", 2)
    first = translate(sar, *args)
    assert first.exit_code == 0, first.output

    def catalog() -> dict[str, dict]:
        return {
            p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k not in ("links",)}
            for p in (out / "stac").glob("*.json")
        }

    recorded = catalog()
    assert sorted(recorded) == ["VH", "VV"] and recorded["VV"]["properties"]["s2o:uncertainty_band"] is True

    asked: list[str] = []  # requests about files in DEST's outputs and quicklooks, and opens of an output
    exists, open_dataset = storage.exists, scene_module.open_dataset

    def counted_exists(fs, path):
        if str(path).startswith(str(out)) and str(path).endswith((".tif", ".png")):
            asked.append(f"exists {path}")
        return exists(fs, path)

    def counted_open(path, env):
        if str(path).startswith(str(out)):
            asked.append(f"open {path}")
        return open_dataset(path, env)

    monkeypatch.setattr(storage, "exists", counted_exists)
    monkeypatch.setattr(scene_module, "open_dataset", counted_open)
    again = translate(sar, *args)
    assert again.exit_code == 0 and "0 scene(s) translated, 2 skipped" in again.output, again.output
    assert asked == []
    assert catalog() == recorded

    # the same manifest as an older version wrote it (no grids): the outputs are read, and give the same catalog
    lines = (out / MANIFEST_FILE).read_text().splitlines()
    old = [{k: v for k, v in json.loads(line).items() if k != "grid"} for line in lines]
    (out / MANIFEST_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    third = translate(sar, *args)
    assert third.exit_code == 0, third.output
    assert sorted(a.split()[0] for a in asked) == ["open", "open"]
    read = catalog()
    asked.clear()  # the grids read are kept in the manifest: the next run reads nothing again
    fourth = translate(sar, *args)
    assert fourth.exit_code == 0 and asked == [] and catalog() == read, fourth.output
    for name, item in recorded.items():
        assert read[name]["bbox"] == pytest.approx(item["bbox"])
        np.testing.assert_allclose(read[name]["geometry"]["coordinates"], item["geometry"]["coordinates"])
        for key in ("proj:code", "proj:wkt2", "proj:transform", "proj:shape", "s2o:uncertainty_band"):
            assert read[name]["properties"].get(key) == item["properties"].get(key), (name, key)
