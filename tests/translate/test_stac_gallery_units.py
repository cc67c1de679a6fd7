"""STAC in (which asset of an item is the SAR, hrefs, SOURCEs that are not STAC), quicklooks and the gallery page,
without Ray: pystac objects and small GeoTIFFs written here."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pystac
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from s2o_platform.translate.gallery import Card, gallery_html, heat_map, output_quicklooks, sar_quicklook
from s2o_platform.translate.sources import SourceError, discover_scenes
from s2o_platform.translate.stac import choose_asset, item_name

UTM31 = "EPSG:32631"


def asset(roles=("data",), polarisation=None, media=pystac.MediaType.GEOTIFF, href="./x.tif"):
    extra = {"sar:polarizations": [polarisation]} if polarisation else {}
    return pystac.Asset(href=href, media_type=media, roles=list(roles), extra_fields=extra)


def test_the_sar_asset_is_chosen_by_polarisation_then_key_then_the_only_data_asset():
    assert choose_asset({"a": asset(polarisation="VH"), "b": asset(polarisation="VV")}, None)[0] == "b"
    assert choose_asset({"measurement-vh": asset(), "measurement-vv": asset()}, None)[0] == "measurement-vv"
    assert choose_asset({"image": asset(), "thumb": asset(roles=("thumbnail",))}, None)[0] == "image"
    only_tiff = {"img": asset(roles=()), "meta": asset(roles=(), media="application/xml")}
    assert choose_asset(only_tiff, None)[0] == "img"
    assert choose_asset({"a": asset(), "b": asset()}, "b")[0] == "b"
    key, why = choose_asset({"a": asset(), "b": asset()}, None)
    assert key is None and "--asset KEY" in why and "['a', 'b']" in why
    key, why = choose_asset({"a": asset()}, "vv")
    assert key is None and "no asset 'vv'" in why
    assert choose_asset({}, None) == (None, "it has no assets")
    # several data assets, none named VV ("covid" and "vvx" only contain the letters): none chosen
    assert choose_asset({"covid": asset(), "vvx": asset(), "x": asset()}, None)[0] is None


def test_item_names_are_safe_file_names():
    assert item_name("S1A_IW_GRDH_1SDV_20200607T010800") == "S1A_IW_GRDH_1SDV_20200607T010800"
    assert item_name("../../etc/passwd") == "etc_passwd"
    assert item_name("a b/c:d") == "a_b_c_d"


def _item(item_id, assets, when=datetime(2021, 5, 1, 10, 30, tzinfo=timezone.utc)):
    made = pystac.Item(item_id, {"type": "Point", "coordinates": [0, 0]}, [0, 0, 0, 0], when, {})
    for key, value in assets.items():
        made.add_asset(key, value)
    return made


def test_an_item_file_becomes_a_scene_with_its_relative_and_vsis3_hrefs_resolved(tmp_path):
    (tmp_path / "items").mkdir()
    one = _item("scene-1", {"vv": asset(href="../data/VV.tif", polarisation="VV")})
    one.save_object(include_self_link=False, dest_href=str(tmp_path / "items" / "scene-1.json"))
    [scene] = discover_scenes(str(tmp_path / "items" / "scene-1.json"))
    assert scene.uri == str(tmp_path / "data" / "VV.tif") and scene.name == "scene-1"
    assert scene.source_item == str(tmp_path / "items" / "scene-1.json")
    assert scene.datetime == "2021-05-01T10:30:00+00:00" and scene.refused is None
    on_s3 = _item("scene-2", {"vv": asset(href="/vsis3/bucket/archive/VV.tif", polarisation="VV")})
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps(pystac.ItemCollection([on_s3]).to_dict()))
    [scene] = discover_scenes(str(collection))
    assert scene.uri == "s3://bucket/archive/VV.tif"


def test_sources_that_are_not_stac_are_refused_with_what_they_are(tmp_path):
    not_json = tmp_path / "a.json"
    not_json.write_text("{ not json")
    with pytest.raises(SourceError, match="cannot read it as STAC JSON"):
        discover_scenes(str(not_json))
    geojson = tmp_path / "b.json"
    geojson.write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    with pytest.raises(SourceError, match="type 'Polygon', not a STAC Item"):
        discover_scenes(str(geojson))
    with pytest.raises(SourceError, match="no such file"):
        discover_scenes(str(tmp_path / "missing.json"))
    empty = tmp_path / "c.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(SourceError, match="holds no items"):
        discover_scenes(str(empty))


def _write_cog(path, bands: np.ndarray, nodata=0) -> str:
    profile = dict(
        driver="COG",
        width=bands.shape[2],
        height=bands.shape[1],
        count=bands.shape[0],
        dtype=str(bands.dtype),
        crs=UTM31,
        transform=from_origin(500_000, 5_000_000, 10, 10),
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands)
    return str(path)


def test_quicklooks_are_small_keep_nodata_transparent_and_map_the_uncertainty(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 256, (3, 1000, 700), dtype=np.uint8)
    spread = np.tile(np.linspace(1, 60, 700, dtype=np.float32), (1000, 1)).astype(np.uint8)[None]
    bands = np.concatenate([rgb, spread])
    bands[:, :200, :200] = 0  # nodata corner
    looks = output_quicklooks(_write_cog(tmp_path / "out.tif", bands), None)
    assert set(looks) == {"quicklook", "uncertainty_quicklook"}
    with Image.open(io.BytesIO(looks["quicklook"])) as image:
        assert image.mode == "RGBA" and image.size == (269, 384)  # the longest side 384 px
        pixels = np.asarray(image)
    assert (pixels[:70, :70, 3] == 0).all() and (pixels[100:, 100:, 3] == 255).all()
    with Image.open(io.BytesIO(looks["uncertainty_quicklook"])) as image:
        heat = np.asarray(image).astype(int)
    assert heat[300, 10, :3].sum() < heat[300, 260, :3].sum()  # low spread dark, high spread bright (magma)
    assert (heat[:70, :70, 3] == 0).all()


def test_heat_map_scales_to_the_99th_percentile_and_hides_nan():
    values = np.linspace(0, 1, 1000, dtype=np.float32).reshape(20, 50)
    values[0, 0] = np.nan
    values[-1, -1] = 100.0  # one outlier does not wash the map out
    rgba = heat_map(values)
    assert rgba.shape == (20, 50, 4) and rgba[0, 0, 3] == 0 and (rgba[1:, :, 3] == 255).all()
    assert rgba[10, 0, :3].sum() < rgba[10, 49, :3].sum()


def test_sar_quicklook_in_db_of_a_linear_scene(tmp_path):
    """The quicklook shows the scale the scene was translated with (the manifest's): linear power in dB."""
    linear = (10 ** (np.random.default_rng(1).uniform(-25, 0, (1, 300, 300)) / 10)).astype(np.float32)
    linear[:, :50, :50] = np.nan
    path = tmp_path / "sar.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=300, height=300, count=1, dtype="float32", crs=UTM31,
        transform=from_origin(0, 0, 10, 10), nodata=np.nan,
    ) as ds:  # fmt: skip
        ds.write(linear)
    with Image.open(io.BytesIO(sar_quicklook(str(path), None, "linear", None))) as image:
        pixels = np.asarray(image)
    assert pixels.shape == (300, 300, 4) and (pixels[:40, :40, 3] == 0).all()
    grey = pixels[60:, 60:, 0].astype(float)
    assert (
        100 < grey.mean() < 160 and grey.std() > 40
    )  # dB, stretched: linear power would be nearly all black


def test_the_gallery_page_escapes_names_and_lists_errors():
    cards = [
        Card(
            "a<b>",
            12,
            3.5,
            "db (metadata)",
            {"quicklook": "a<b>.quicklook.png", "sar_quicklook": "a.sar.png"},
        )
    ]
    page = gallery_html(
        cards, [("s3://x/bad.tif", "cannot open <it>")], "title", {"stage": "student", "steps": 1}
    )
    assert "<b>" not in page.replace("<body>", "") and "a&lt;b&gt;" in page
    assert page.count('class="card"') == 1 and "Errors (1)" in page and "cannot open &lt;it&gt;" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline, static


def test_a_stac_items_time_wins_over_the_files_tag_and_an_item_without_one_keeps_it(tmp_path):
    """Manifest.record: what the run recorded (the file's TIFFTAG_DATETIME) is replaced by the source item's
    values where the item has them, and kept where it has none; the manifest read back says the same."""
    from s2o_platform.translate.manifest import (
        DATETIME_FROM_FILE,
        DATETIME_FROM_ITEM,
        Manifest,
        SceneRecord,
    )

    manifest = Manifest(str(tmp_path), log=lambda message: None)
    manifest.scene_sources = {
        "dated.tif": {"source_item": "a.json", "datetime": "2020-06-07T01:08:00Z", "datetime_source": DATETIME_FROM_ITEM},
        "undated.tif": {"source_item": "b.json", "datetime": None, "datetime_source": None},
    }  # fmt: skip
    for scene in ("dated.tif", "undated.tif", "plain.tif"):
        manifest.record(
            SceneRecord(
                scene=scene,
                status="done",
                output=str(tmp_path / scene),
                datetime="2019:01:02 03:04:05",
                datetime_source=DATETIME_FROM_FILE,
            )
        )
    expected = {
        "dated.tif": ("a.json", "2020-06-07T01:08:00Z", DATETIME_FROM_ITEM),
        "undated.tif": ("b.json", "2019:01:02 03:04:05", DATETIME_FROM_FILE),
        "plain.tif": (None, "2019:01:02 03:04:05", DATETIME_FROM_FILE),
    }
    for records in (manifest.records, Manifest(str(tmp_path), log=lambda message: None).records):
        got = {k: (r.source_item, r.datetime, r.datetime_source) for k, r in records.items()}
        assert got == expected
    # a record of a newer version, with a key this one does not know, is read (not dropped and redone)
    line = json.dumps({"scene": "newer.tif", "status": "done", "output": "x.tif", "from_the_future": 1})
    with open(manifest.path, "a") as f:
        f.write(line + "\n")
    assert Manifest(str(tmp_path), log=lambda message: None).records["newer.tif"].output == "x.tif"


@pytest.mark.parametrize("form", ["absolute", "relative", "file://", "nested"])
def test_is_done_looks_outputs_up_in_one_listing_whatever_form_dest_is_given_in(form, tmp_path, monkeypatch):
    """Manifest.listing lists the folders of the recorded outputs (not the rest of DEST), and is_done answers
    from it: an output there is done, one deleted since is not, with no request per output."""
    from s2o_platform import storage
    from s2o_platform.translate.manifest import Manifest, SceneRecord

    monkeypatch.chdir(tmp_path)
    dest = {"absolute": str(tmp_path / "out"), "relative": "out", "file://": f"file://{tmp_path}/out"}.get(
        form, str(tmp_path / "out")
    )
    sub = "2024/06/" if form == "nested" else ""
    (tmp_path / "out" / sub).mkdir(parents=True)
    (tmp_path / "out" / "stac").mkdir()
    (tmp_path / "out" / "stac" / "unrelated.json").write_text("{}")
    manifest = Manifest(dest, log=lambda message: None)
    for name in ("kept", "deleted"):
        (tmp_path / "out" / sub / f"{name}.tif").write_bytes(b"x")
        output = storage.join(manifest.root, f"{sub}{name}.tif")
        manifest.record(SceneRecord(scene=f"{name}.src", status="done", output=output))
    (tmp_path / "out" / sub / "deleted.tif").unlink()

    manifest = Manifest(dest, log=lambda message: None)  # as the next run reads it
    asked = []
    monkeypatch.setattr(storage, "exists", lambda fs, path: asked.append(path) or True)
    listing = manifest.listing()
    assert listing.folders == {str(tmp_path / "out" / sub).rstrip("/")}  # not stac/
    assert manifest.is_done("kept.src", listing) and not manifest.is_done("deleted.src", listing)
    assert not manifest.is_done("never.src", listing)
    assert asked == []
    assert manifest.is_done("deleted.src")  # without a listing: asked for (the stub above says "there")
    assert asked == [str(tmp_path / "out" / sub / "deleted.tif")]


def test_a_folder_that_cannot_be_listed_is_a_warning_and_outputs_are_asked_for(tmp_path, monkeypatch):
    from s2o_platform import storage
    from s2o_platform.translate.manifest import Manifest, SceneRecord

    said = []
    manifest = Manifest(str(tmp_path), log=said.append)
    (tmp_path / "a.tif").write_bytes(b"x")
    manifest.record(SceneRecord(scene="a.src", status="done", output=str(tmp_path / "a.tif")))

    def refused(*args, **kwargs):
        raise PermissionError("listing refused")

    monkeypatch.setattr(storage, "list_files", refused)
    assert manifest.listing() is None
    assert any("could not be listed" in line and "PermissionError" in line for line in said)
    assert manifest.is_done("a.src", None)
