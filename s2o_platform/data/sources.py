"""Finding SAR/optical pairs in the layouts users have. Lists files only; reads no pixels.

Accepted SOURCE forms (local path or s3:// URI):
- a SEN1-2 folder: ROIs1158_spring/s1_90/ROIs1158_spring_s1_90_p33.png paired with
  ROIs1158_spring/s2_90/ROIs1158_spring_s2_90_p33.png; scene = ROI + season + scene number;
- a folder with `sar/` and `optical/` sub-folders of same-named files (PNG, JPEG, TIFF/GeoTIFF; an
  optical entry may also be a folder of band files of the same name), and optionally `labels/`: a
  land-cover class map per pair (same names; one band of class numbers), stored with its tiles; scene = the file's stem, or
  the SEN1-2 scene when the name follows SEN1-2's pattern;
- an SSL4EO-S12-style site folder: `s1/<product>/VV.tif` with `s2*/<product>/B4.tif,B3.tif,B2.tif`;
- CSV lists as the authors' code uses them: two CSV files in a row (SAR paths, then optical paths,
  one per line, matched by line), or one CSV with `sar` and `optical` columns; relative paths are
  taken from the CSV's folder.
Anything that cannot be paired is returned as a skipped item with its reason.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from s2o_platform import storage
from s2o_platform.data.rasters import IMAGE_SUFFIXES, TIFF_SUFFIXES

SEN12_NAME = re.compile(
    r"^(?P<roi>ROIs\d+)_(?P<season>[a-z]+)_(?:s[12]_)?(?P<scene>\d+)_p(?P<patch>\d+)$", re.IGNORECASE
)
SEN12_FOLDER = re.compile(r"^(?P<roi>ROIs\d+)_(?P<season>[a-z]+)$", re.IGNORECASE)


@dataclass
class PairSource:
    """One SAR/optical pair to tile. Plain data so it can travel to Ray tasks."""

    sar: str  # path inside the source filesystem (or URI for s3)
    optical: str
    scene_id: str
    source_kind: str  # sen12 | folders | site | csv
    uri_prefix: str = ""  # "s3://" for object-store sources, "" for local paths
    labels: str | None = None  # a land-cover class map of the same scene (folders layout: labels/), if any

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SkippedItem:
    path: str
    reason: str


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def scene_of(stem: str) -> str:
    """Scene id for a file stem: SEN1-2 names give ROI_season_scene, other names are their own scene."""
    m = SEN12_NAME.match(stem)
    if m:
        return f"{m['roi']}_{m['season']}_{m['scene']}"
    return stem


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    return sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.path)


def discover(
    source: str, options: storage.StorageOptions | None = None
) -> tuple[list[PairSource], list[SkippedItem]]:
    """Find the pairs in one SOURCE. Raises nothing for bad input: problems come back as skipped items."""
    prefix = "s3://" if source.startswith(("s3://", "s3a://")) else ""
    try:
        fs, root = storage.resolve(source, options)
        info = fs.get_file_info(root)
    except (ValueError, OSError) as err:
        return [], [SkippedItem(source, f"unreadable source: {err}")]
    if info.type == pafs.FileType.NotFound:
        return [], [SkippedItem(source, "unreadable source: no such file or folder")]
    try:
        if info.type == pafs.FileType.File:
            if root.lower().endswith(".csv"):
                return _discover_csv_columns(fs, root, source, prefix)
            return [], [SkippedItem(source, "a single file is not a source: give a folder or a CSV list")]
        names = {i.base_name: i for i in _children(fs, root)}
        if "sar" in names and "optical" in names:
            pairs, skipped = _discover_folders(fs, root)
        elif "s1" in names and any(n.startswith("s2") for n in names):
            pairs, skipped = _discover_site(fs, root, names)
        elif any(SEN12_FOLDER.match(n) for n in names) or SEN12_FOLDER.match(root.rsplit("/", 1)[-1]):
            pairs, skipped = _discover_sen12(fs, root)
        else:
            return [], [
                SkippedItem(
                    source,
                    "unrecognised layout: expected sar/ + optical/ sub-folders, a SEN1-2 folder "
                    "(ROIsXXXX_season/s1_N/...), an s1/ + s2*/ site folder, or CSV lists",
                )
            ]
    except OSError as err:
        return [], [SkippedItem(source, f"unreadable source: {err}")]
    for p in pairs:
        p.uri_prefix = prefix
    return pairs, skipped


def _discover_folders(fs: pafs.FileSystem, root: str) -> tuple[list[PairSource], list[SkippedItem]]:
    def entries(sub: str) -> dict[str, str]:
        out = {}
        for i in _children(fs, storage.join(root, sub)):
            if i.type == pafs.FileType.Directory or i.base_name.lower().endswith(IMAGE_SUFFIXES):
                out.setdefault(_stem(i.path), i.path)
        return out

    sar, optical = entries("sar"), entries("optical")
    labels = (
        entries("labels")
        if fs.get_file_info(storage.join(root, "labels")).type == pafs.FileType.Directory
        else {}
    )
    pairs = [
        PairSource(sar[s], optical[s], scene_of(s), "folders", labels=labels.get(s))
        for s in sorted(sar.keys() & optical.keys())
    ]
    skipped = [
        SkippedItem(sar[s], "SAR file without its optical partner")
        for s in sorted(sar.keys() - optical.keys())
    ]
    skipped += [
        SkippedItem(optical[s], "optical file without its SAR partner")
        for s in sorted(optical.keys() - sar.keys())
    ]
    return pairs, skipped


def _discover_site(fs, root: str, names: dict) -> tuple[list[PairSource], list[SkippedItem]]:
    s1_products = [i.path for i in _children(fs, names["s1"].path) if i.type == pafs.FileType.Directory]
    s2_root = sorted(n for n in names if n.startswith("s2"))[0]
    s2_products = [i.path for i in _children(fs, names[s2_root].path) if i.type == pafs.FileType.Directory]
    site = root.rsplit("/", 1)[-1]
    if len(s1_products) != 1 or len(s2_products) != 1:
        return [], [
            SkippedItem(
                root,
                f"site folder needs one S1 and one S2 product, found {len(s1_products)} and {len(s2_products)}",
            )
        ]
    return [PairSource(s1_products[0], s2_products[0], site, "site")], []


def _discover_sen12(fs, root: str) -> tuple[list[PairSource], list[SkippedItem]]:
    files = [p for p in storage.list_files(fs, root) if p.lower().endswith(IMAGE_SUFFIXES)]
    sar, optical = {}, {}
    for path in files:
        parts = path.split("/")
        folder = parts[-2] if len(parts) >= 2 else ""
        m = SEN12_NAME.match(_stem(path))
        if not m:
            continue
        key = f"{m['roi']}_{m['season']}_{m['scene']}_p{m['patch']}"
        if folder.lower().startswith("s1_") or "_s1_" in path.rsplit("/", 1)[-1].lower():
            sar[key] = path
        elif folder.lower().startswith("s2_") or "_s2_" in path.rsplit("/", 1)[-1].lower():
            optical[key] = path
    pairs = [
        PairSource(sar[k], optical[k], scene_of(k), "sen12") for k in sorted(sar.keys() & optical.keys())
    ]
    skipped = [
        SkippedItem(sar[k], "SAR file without its optical partner")
        for k in sorted(sar.keys() - optical.keys())
    ]
    skipped += [
        SkippedItem(optical[k], "optical file without its SAR partner")
        for k in sorted(optical.keys() - sar.keys())
    ]
    return pairs, skipped


def _resolve_listed(path: str, csv_path: str) -> str:
    path = path.strip()
    if "://" in path or path.startswith("/"):
        return path.split("://", 1)[1] if path.startswith(("s3://", "s3a://")) else path
    return storage.join(csv_path.rsplit("/", 1)[0], path)


def _read_csv_rows(fs, path: str) -> list[list[str]]:
    data = storage.read_bytes(fs, path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): save the list as UTF-8"
        ) from None
    return [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]


def _pairs_from_lists(
    sar_paths: list[str], optical_paths: list[str], where: str
) -> tuple[list[PairSource], list[SkippedItem]]:
    pairs = [PairSource(s, o, scene_of(_stem(s)), "csv") for s, o in zip(sar_paths, optical_paths)]
    skipped = [
        SkippedItem(s, f"SAR path without an optical partner in {where}")
        for s in sar_paths[len(optical_paths) :]
    ]
    skipped += [
        SkippedItem(o, f"optical path without a SAR partner in {where}")
        for o in optical_paths[len(sar_paths) :]
    ]
    return pairs, skipped


def _discover_csv_columns(
    fs, path: str, source: str, prefix: str
) -> tuple[list[PairSource], list[SkippedItem]]:
    rows = _read_csv_rows(fs, path)
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "sar" not in header or "optical" not in header:
        return [], [
            SkippedItem(
                source,
                "CSV without 'sar' and 'optical' columns: give it together with its partner list (SAR_LIST.csv OPTICAL_LIST.csv)",
            )
        ]
    si, oi = header.index("sar"), header.index("optical")
    pairs, skipped = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) <= max(si, oi) or not row[si].strip() or not row[oi].strip():
            skipped.append(SkippedItem(f"{source}:{n}", "CSV row without both a SAR and an optical path"))
            continue
        sar, opt = _resolve_listed(row[si], path), _resolve_listed(row[oi], path)
        pairs.append(PairSource(sar, opt, scene_of(_stem(sar)), "csv", prefix))
    return pairs, skipped


def discover_csv_lists(sar_csv: str, optical_csv: str, options: storage.StorageOptions | None = None):
    """Pairs from two CSV lists (SAR paths, optical paths; matched by line)."""
    prefix = "s3://" if sar_csv.startswith("s3://") else ""
    try:
        fs, sar_path = storage.resolve(sar_csv, options)
        _, opt_path = storage.resolve(optical_csv, options)
        sar_rows, opt_rows = _read_csv_rows(fs, sar_path), _read_csv_rows(fs, opt_path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return [], [SkippedItem(f"{sar_csv} {optical_csv}", f"unreadable CSV list: {err}")]

    def column(rows, path):
        paths = [r[0] for r in rows if r[0].strip()]
        if paths and not paths[0].lower().endswith(IMAGE_SUFFIXES + TIFF_SUFFIXES):
            paths = paths[1:]  # a header line
        return [_resolve_listed(p, path) for p in paths]

    pairs, skipped = _pairs_from_lists(
        column(sar_rows, sar_path), column(opt_rows, opt_path), f"{sar_csv} / {optical_csv}"
    )
    for p in pairs:
        p.uri_prefix = prefix
    return pairs, skipped


def discover_all(sources: list[str], options: storage.StorageOptions | None = None):
    """Discover every SOURCE argument; two CSV files in a row without sar/optical columns form a list pair."""
    pairs: list[PairSource] = []
    skipped: list[SkippedItem] = []
    i = 0
    while i < len(sources):
        src = sources[i]
        nxt = sources[i + 1] if i + 1 < len(sources) else None
        try:
            if (
                src.lower().endswith(".csv")
                and nxt
                and nxt.lower().endswith(".csv")
                and not _has_pair_columns(src, options)
            ):
                step = 2
                p, s = discover_csv_lists(src, nxt, options)
            else:
                step = 1
                p, s = discover(src, options)
        except Exception as err:  # noqa: BLE001 - one unreadable SOURCE is recorded by name; the others go on
            p, s = (
                [],
                [
                    SkippedItem(
                        src,
                        f"cannot read this source: {type(err).__name__}: {err}"
                        if not isinstance(err, ValueError)
                        else f"cannot read this source: {err}",
                    )
                ],
            )
        i += step
        pairs += p
        skipped += s
    return pairs, skipped


def _has_pair_columns(path: str, options) -> bool:
    try:
        fs, p = storage.resolve(path, options)
        rows = _read_csv_rows(fs, p)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    header = [c.strip().lower() for c in rows[0]] if rows else []
    return "sar" in header and "optical" in header
