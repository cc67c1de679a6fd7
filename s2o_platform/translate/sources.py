"""Which SAR scenes to translate, and where each one's output goes."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from s2o_platform import storage
from s2o_platform.data.rasters import TIFF_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst", ".list")


class SourceError(ValueError):
    """A SOURCE argument that names no scenes."""


@dataclass(frozen=True)
class Scene:
    uri: str  # local path or s3://bucket/key
    name: str  # relative name, '/'-separated, without suffix: the output is DEST/<name>.tif

    @property
    def output_name(self) -> str:
        return f"{self.name}.tif"


def _is_tiff(path: str) -> bool:
    return path.lower().endswith(TIFF_SUFFIXES)


def _strip_suffix(path: str) -> str:
    return path.rsplit(".", 1)[0]


def discover_scenes(source: str, options: storage.StorageOptions | None = None) -> list[Scene]:
    """GeoTIFF scenes named by `source`: a folder (searched recursively), a glob pattern, a text file
    listing one path or URI per line ('#' comments), an s3:// prefix, or a single GeoTIFF."""
    if storage.is_uri(source) and not source.startswith("file://"):
        fs, root = storage.resolve(source, options)
        scheme = source.split("://", 1)[0]
        files = [p for p in storage.list_files(fs, root) if _is_tiff(p)]
        scenes = [Scene(f"{scheme}://{p}", _strip_suffix(p[len(root):].lstrip("/") or os.path.basename(p))) for p in files]
    elif any(ch in source for ch in "*?["):
        files = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and _is_tiff(p))
        base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files]) if files else ""
        scenes = [Scene(os.path.abspath(p), _strip_suffix(os.path.relpath(os.path.abspath(p), base))) for p in files]
    elif os.path.isdir(source):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(source) for f in names if _is_tiff(f))
        scenes = [Scene(os.path.abspath(p), _strip_suffix(os.path.relpath(p, source)).replace(os.sep, "/")) for p in files]
    elif os.path.isfile(source) and source.lower().endswith(LIST_SUFFIXES):
        lines = [ln.strip() for ln in open(source, encoding="utf-8")]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        scenes = [Scene(e if storage.is_uri(e) else os.path.abspath(os.path.join(os.path.dirname(source), e)),
                        _strip_suffix(e.split("://", 1)[-1].rsplit("/", 1)[-1])) for e in entries]
    elif os.path.isfile(source) and _is_tiff(source):
        scenes = [Scene(os.path.abspath(source), _strip_suffix(os.path.basename(source)))]
    else:
        raise SourceError(f"SOURCE {source!r} is not a folder, glob, list file (.txt), GeoTIFF or s3:// prefix")
    if not scenes:
        raise SourceError(f"SOURCE {source!r} holds no GeoTIFF scenes (.tif, .tiff)")
    names = [s.name for s in scenes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SourceError(f"scenes would write the same output name: {duplicates[:5]}; list them from one root folder")
    return scenes
