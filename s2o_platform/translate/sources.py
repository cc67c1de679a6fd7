"""Which SAR scenes to translate, and where each one's output goes."""

from __future__ import annotations

import glob
import itertools
import os
import posixpath
from dataclasses import dataclass

from s2o_platform import storage
from s2o_platform.data.rasters import TIFF_SUFFIXES, strip_suffix
from s2o_platform.errors import S2OError
from s2o_platform.translate.stac import StacSourceError, item_name, looks_like_stac, read_stac_source

LIST_SUFFIXES = (".txt", ".lst", ".list")
OUTPUT_SUFFIX = ".tif"


def output_file(name: str) -> str:
    """A scene's output file, relative to DEST: DEST/<name>.tif (the one place that names outputs)."""
    return f"{name}{OUTPUT_SUFFIX}"


def output_scene_name(output: str, dest_uri: str) -> str:
    """The inverse of output_file: DEST/<name>.tif -> name ('/'-separated; the output's file name where it lies
    outside DEST, as an output recorded by a run into another DEST does)."""
    root = dest_uri.rstrip("/") + "/"
    relative = output[len(root) :] if output.startswith(root) else posixpath.basename(output)
    return relative.removesuffix(OUTPUT_SUFFIX)


class SourceError(S2OError, ValueError):
    """A SOURCE argument that names no scenes."""


@dataclass(frozen=True)
class Scene:
    uri: str  # local path or s3://bucket/key
    name: str  # relative name, '/'-separated, without suffix: the output is DEST/<name>.tif
    refused: str | None = None  # why it cannot be translated (recorded as failed; the others go on)
    source_item: str | None = None  # a STAC SOURCE's item this scene is the asset of
    datetime: str | None = None  # that item's acquisition time (ISO 8601)

    @property
    def output_name(self) -> str:
        return output_file(self.name)


def _is_tiff(path: str) -> bool:
    return path.lower().endswith(TIFF_SUFFIXES)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _glob_root(pattern: str) -> str:
    """The folder a glob searches: its leading components without wildcards."""
    return os.sep.join(itertools.takewhile(lambda p: not glob.has_magic(p), pattern.split(os.sep))) or "."


def _searched_dest(searched: str, dest: str | None) -> str | None:
    """DEST, when it lies strictly inside the folder searched for scenes: what is under it are this command's
    outputs (and work files), never scenes. A SOURCE inside DEST is the input, and stays so."""
    if dest is not None and dest.startswith("file://"):
        dest = storage.resolve(dest)[1]
    if dest is None or storage.is_uri(dest) != storage.is_uri(searched):
        return None
    if storage.is_uri(dest):
        if dest.split("://", 1)[0] != searched.split("://", 1)[0]:
            return None
        dest_key, searched_key = dest.split("://", 1)[1].rstrip("/"), searched.split("://", 1)[1].rstrip("/")
    else:
        dest_key, searched_key = _real(dest), _real(searched)
    return dest_key if dest_key != searched_key and _inside(dest_key, searched_key) else None


def _prefix_scene(scheme: str, source: str, root: str, path: str) -> Scene:
    """A scene under an object-store prefix, named by its key relative to the prefix; a key with '..' or an
    absolute part would put its output outside DEST, so it is refused (by name) instead."""
    key = path[len(root) :].removeprefix("/") or os.path.basename(path)
    uri = f"{scheme}://{path}"
    if not storage.is_safe_relative_key(key):
        return Scene(
            uri,
            key,
            refused=f"its key {key!r} under {source} has '..' or an absolute part, so its output would "
            f"be written outside DEST; rename the object (keys are relative paths)",
        )
    return Scene(uri, strip_suffix(key))


def _stac_scenes(source: str, asset: str | None, options: storage.StorageOptions | None) -> list[Scene]:
    try:
        items = read_stac_source(source, asset, options)
    except StacSourceError as err:
        raise SourceError(str(err)) from None
    return [
        Scene(
            item.asset_href or item.item_href or item.item_id,
            item_name(item.item_id),
            refused=item.refused,
            source_item=item.item_href,
            datetime=item.datetime,
        )
        for item in items
    ]


def discover_scenes(
    source: str,
    options: storage.StorageOptions | None = None,
    dest: str | None = None,
    asset: str | None = None,
) -> list[Scene]:
    """GeoTIFF scenes named by `source`: a folder (searched recursively), a glob pattern, a text file
    listing one path or URI per line ('#' comments), an s3:// prefix, a single GeoTIFF, or STAC JSON (an Item,
    ItemCollection, Catalog or Collection, local or s3://: one scene per item, its SAR asset chosen by `asset`
    or by translate/stac.choose_asset; scenes named by item id).

    `dest`: the output folder; when it lies inside the folder, glob root or prefix searched, the files under it
    are left out (else every re-run would take its own outputs for scenes). Listed and single files are taken
    as named."""
    if looks_like_stac(source):
        scenes = _stac_scenes(source, asset, options)
    elif storage.is_uri(source) and not source.startswith("file://"):
        fs, root = storage.resolve(source, options)
        scheme = source.split("://", 1)[0]
        files = [p for p in storage.list_files(fs, root) if _is_tiff(p)]
        outputs = _searched_dest(f"{scheme}://{root}", dest)
        scenes = [
            _prefix_scene(scheme, source, root, p) for p in files if not (outputs and _inside(p, outputs))
        ]
    elif any(ch in source for ch in "*?["):
        outputs = _searched_dest(_glob_root(source), dest)
        files = sorted(
            p
            for p in glob.glob(source, recursive=True)
            if os.path.isfile(p) and _is_tiff(p) and not (outputs and _inside(_real(p), outputs))
        )
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files]) if files else ""
        scenes = [
            Scene(os.path.abspath(p), strip_suffix(os.path.relpath(os.path.abspath(p), base))) for p in files
        ]
    elif os.path.isdir(source):
        outputs = _searched_dest(source, dest)
        files = []
        for folder, subfolders, names in os.walk(source):
            subfolders[:] = [
                f for f in subfolders if not (outputs and _inside(_real(os.path.join(folder, f)), outputs))
            ]
            files += [os.path.join(folder, f) for f in names if _is_tiff(f)]
        files.sort()
        scenes = [
            Scene(os.path.abspath(p), strip_suffix(os.path.relpath(p, source)).replace(os.sep, "/"))
            for p in files
        ]
    elif os.path.isfile(source) and source.lower().endswith(LIST_SUFFIXES):
        lines = [ln.strip() for ln in open(source, encoding="utf-8")]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        scenes = [
            Scene(
                e if storage.is_uri(e) else os.path.abspath(os.path.join(os.path.dirname(source), e)),
                strip_suffix(e.split("://", 1)[-1].rsplit("/", 1)[-1]),
            )
            for e in entries
        ]
    elif os.path.isfile(source) and _is_tiff(source):
        scenes = [Scene(os.path.abspath(source), strip_suffix(os.path.basename(source)))]
    else:
        raise SourceError(
            f"SOURCE {source!r} is not a folder, glob, list file (.txt), GeoTIFF, STAC JSON or s3:// prefix"
        )
    if not scenes:
        raise SourceError(f"SOURCE {source!r} holds no GeoTIFF scenes (.tif, .tiff)")
    names = [s.name for s in scenes if not s.refused]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(
            f"scenes would write the same output name: {duplicates[:5]}; list them from one root folder"
        )
    return scenes
