"""Which scenes a SOURCE names, and the output name of each."""

from pathlib import Path

import pytest

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
