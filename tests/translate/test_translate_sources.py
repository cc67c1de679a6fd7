"""Which scenes a SOURCE names, the output name of each, and which scene pixels are taken (the SAR pixel rule
`data.normalization.sar_pixels`, shared with the HTTP service)."""

from pathlib import Path

import numpy as np
import pytest

from s2o_platform.data.normalization import SarNormalization, UnsupportedSarPixels, sar_pixels
from s2o_platform.data.rasters import InputError
from s2o_platform.data.scene import inspect_scene, read_strip
from s2o_platform.translate.sources import SourceError, discover_scenes


@pytest.fixture
def archive(tmp_path):
    for rel in ("a/s1.tif", "a/deep/s2.TIFF", "b/s3.tif", "b/notes.txt", "b/quicklook.png"):
        path = tmp_path / "archive" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "archive"


def test_folder_is_searched_recursively_and_names_keep_the_subfolders(archive):
    scenes = discover_scenes(str(archive))
    assert [s.name for s in scenes] == ["a/deep/s2", "a/s1", "b/s3"]
    assert all(Path(s.uri).is_absolute() for s in scenes) and scenes[1].output_name == "a/s1.tif"


def test_glob_and_single_file(archive):
    # a glob keeps only GeoTIFFs (any case), named relative to their common folder
    assert sorted(s.name for s in discover_scenes(str(archive / "a" / "**" / "*"))) == ["deep/s2", "s1"]
    assert [s.name for s in discover_scenes(str(archive / "b" / "s3.tif"))] == ["s3"]


def test_list_file_with_comments_and_relative_paths(archive, tmp_path):
    listing = archive / "list.txt"
    listing.write_text("# scenes\na/s1.tif\n\nb/s3.tif\ns3://bucket/x/s9.tif\n")
    scenes = discover_scenes(str(listing))
    assert [s.name for s in scenes] == ["s1", "s3", "s9"]
    assert scenes[0].uri == str(archive / "a" / "s1.tif") and scenes[2].uri == "s3://bucket/x/s9.tif"


def test_errors_name_the_source(tmp_path, archive):
    with pytest.raises(SourceError, match="is not a folder"):
        discover_scenes(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no GeoTIFF"):
        discover_scenes(str(tmp_path / "empty"))
    listing = tmp_path / "dup.txt"
    listing.write_text("archive/a/s1.tif\narchive/b/s1.tif\n")
    (archive / "b" / "s1.tif").write_bytes(b"x")
    with pytest.raises(SourceError, match="same output name"):
        discover_scenes(str(listing))


# --- the SAR pixel rule on the translate read path -------------------------------------------------------------

NORM = SarNormalization()


def scene(tmp_path, values: np.ndarray, dtype: str | None = None, **profile) -> str:
    """A georeferenced one-band GeoTIFF scene of (1, H, W) `values`, stored as `dtype`."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / f"scene-{dtype or values.dtype}.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=values.shape[2],
        height=values.shape[1],
        count=1,
        dtype=dtype or str(values.dtype),
        crs="EPSG:32631",
        transform=from_origin(600_000.0, 4_800_000.0, 10.0, 10.0),
        **profile,
    ) as ds:
        ds.write(values)
        if profile.get("photometric") == "palette":
            ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)})
    return str(path)


def inspect(path: str, sar_scale: str = "auto"):
    return inspect_scene(path, "s", None, sar_scale, 32, 8, NORM)


def test_real_scenes_are_taken_as_before(tmp_path):
    info = inspect(scene(tmp_path, np.full((1, 32, 32), -12.0, np.float32)))
    assert (info.dtype, info.scale) == ("float32", "db")
    tiles, _ = read_strip(info, 0)
    np.testing.assert_allclose(tiles[0, 0], NORM.db_to_model(np.full((32, 32), -12.0)), atol=1e-6)
    assert inspect(scene(tmp_path, np.full((1, 32, 32), 500, np.uint16))).scale == "dn"
    assert inspect(scene(tmp_path, np.full((1, 32, 32), 90, np.uint8))).scale == "uint8"


def test_complex_slc_scenes_are_detected_by_the_shared_rule(tmp_path):
    # calibrated complex float: |z| = 0.1 -> intensity 0.01 = -20 dB (the imaginary part counts)
    info = inspect(scene(tmp_path, np.full((1, 32, 32), 0.06 + 0.08j, np.complex64)))
    assert (info.dtype, info.scale) == ("complex64", "linear") and "|z|^2" in info.scale_reason
    tiles, masks = read_strip(info, 0)
    np.testing.assert_allclose(tiles[0, 0], NORM.db_to_model(np.full((32, 32), -20.0)), atol=1e-5)
    assert masks.all()
    # complex integers (Sentinel-1 SLC's CInt16): amplitude |z| as digital numbers
    info = inspect(scene(tmp_path, np.full((1, 32, 32), 300 + 400j, np.complex64), dtype="complex_int16"))
    assert (info.dtype, info.scale) == ("complex_int16", "dn")
    tiles, _ = read_strip(info, 0)
    np.testing.assert_allclose(
        tiles[0, 0], NORM.db_to_model(np.full((32, 32), 20 * np.log10(500.0) - 56.0)), atol=1e-5
    )
    # an explicit scale picks the detection; dB does not describe complex values
    path = scene(tmp_path, np.full((1, 32, 32), 300 + 400j, np.complex64))
    assert inspect(path, "dn").scale == "dn"
    with pytest.raises(InputError, match="not db"):
        inspect(path, "db")


@pytest.mark.parametrize(
    "values,dtype,profile,says",
    [
        (np.zeros((1, 32, 32), np.int8), None, {}, "int8"),
        (np.zeros((1, 32, 32), np.uint8), None, {"nbits": 1}, "1-bit"),
        (np.zeros((1, 32, 32), np.uint8), None, {"photometric": "palette"}, "palette"),
    ],
)
def test_scenes_the_rule_refuses_are_input_errors_with_its_message(tmp_path, values, dtype, profile, says):
    with pytest.raises(InputError) as info:
        inspect(scene(tmp_path, values, dtype, **profile))
    assert says in str(info.value) and "8-bit greyscale" in str(info.value)


def test_one_rule_one_message():
    """The service's 422 and translate's per-scene error carry the same rule's words."""
    with pytest.raises(UnsupportedSarPixels) as rule:
        sar_pixels("int8")
    from s2o_platform.serving.codec import RequestError, decode_sar, geotiff_bytes

    with pytest.raises(RequestError) as served:
        decode_sar(
            geotiff_bytes(np.zeros((1, 32, 32), np.int8), crs="EPSG:32631"), "tiff", NORM, 1, 1024, 2**26
        )
    assert served.value.message == str(rule.value)
    for dtype in (
        "uint8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "float32",
        "float64",
        "complex_int16",
        "complex64",
    ):
        assert sar_pixels(dtype).dtype == dtype
