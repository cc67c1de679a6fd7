"""The end of an `s2o translate` run: what DEST shows beside its COGs, rebuilt from the manifest every run.

- quicklooks (translate/gallery.py) of the scenes translated in this run, and of done scenes that lack them;
- DEST/catalog.json, the STAC catalog of every done scene (translate/stac.py), rewritten whole, so a re-run
  updates it and never duplicates an item;
- DEST/index.html, the gallery of the same scenes and the errors of the failed ones.

Every file is written atomically. Nothing here can lose a translation: a quicklook or catalog that cannot be made
is a warning in the log (the COGs and the manifest are already written), and the run's exit code stays that of
its scenes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import replace

from s2o_platform import storage
from s2o_platform.translate.gallery import (
    GALLERY_FILE,
    QUICKLOOK_SUFFIXES,
    Card,
    gallery_html,
    output_quicklooks,
    quicklook_name,
    sar_quicklook,
    write_file,
)
from s2o_platform.translate.manifest import DATETIME_FROM_FILE, DATETIME_FROM_ITEM, Manifest, SceneRecord
from s2o_platform.translate.sources import output_scene_name
from s2o_platform.translate.stac import CATALOG_FILE, ITEMS_FOLDER, OutputScene, catalog_items, write_catalog
from s2o_platform.translate.writer import read_output_grid


def is_view_file(name: str) -> bool:
    """Whether a file or folder directly in DEST is one of the views this module writes (quicklooks, catalog,
    its items folder, the gallery), as opposed to an output, the manifest or a leftover."""
    return name in (CATALOG_FILE, ITEMS_FOLDER, GALLERY_FILE) or name.endswith(
        tuple(QUICKLOOK_SUFFIXES.values())
    )


def model_identity(bundle: str, stage: str, steps: int, seed: int, uncertainty: int, options) -> dict:
    """What made a run's outputs, as the catalog's items and the gallery state it (a content hash of the bundle:
    the same weights give the same hash wherever the bundle was copied)."""
    from s2o_platform.bundle import bundle_digest

    return {
        "stage": stage,
        "steps": steps,
        "seed": seed,
        "uncertainty_samples": uncertainty or None,
        "bundle_sha256": bundle_digest(bundle, options),
    }


def publish(
    dest: str,
    manifest: Manifest,
    fresh: set[str],
    band: str | int | None,
    options: storage.StorageOptions | None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Quicklooks, catalog and gallery for DEST's done scenes (`fresh`: the scene URIs done in this run, whose
    quicklooks are made again). Returns the warnings it logged."""
    warnings: list[str] = []
    dest_fs, dest_root = storage.resolve(dest, options)
    dest_uri = dest.rstrip("/") if storage.is_uri(dest) else dest_root
    # one record per output: a re-run from another SOURCE may have written the same DEST/<name>.tif since
    latest: dict[str, SceneRecord] = {}
    for r in manifest.records.values():
        if (
            r.status == "done"
            and r.output
            and (r.output not in latest or r.finished_at > latest[r.output].finished_at)
        ):
            latest[r.output] = r
    scenes: list[OutputScene] = []
    cards: list[Card] = []
    listing = (
        manifest.listing()
    )  # what is in DEST now, outputs and quicklooks: one listing, no request per file
    for output in sorted(latest):
        record = latest[output]
        if not manifest.is_done(record.scene, listing):  # output deleted since: translated again next run
            continue
        name = output_scene_name(record.output, dest_uri)
        images = _quicklooks(
            record, name, fresh, band, dest, listing, dest_fs, dest_root, options, warnings, log
        )
        when, when_from = record.datetime, record.datetime_source
        if when_from is None:  # recorded by an older version: the item's time, else the file's tag read now
            when, when_from = record.datetime, DATETIME_FROM_ITEM
            if when is None:
                when, when_from = _source_datetime(record.scene, options), DATETIME_FROM_FILE
        scenes.append(
            OutputScene(
                name=name,
                output=record.output,
                source=record.scene,
                tiles=record.tiles,
                seconds=record.seconds,
                scale=record.scale,
                source_item=record.source_item,
                datetime=when,
                datetime_source=when_from if when else None,
                quicklooks=tuple((key, posixpath.basename(path)) for key, path in images.items()),
                finished_at=record.finished_at,
                model=record.model or {},
                grid=record.grid or _read_grid(record, manifest, options, warnings, log),
            )
        )
        cards.append(Card(name, record.tiles, record.seconds, record.scale, images))
    errors = sorted((r.scene, r.reason or "") for r in manifest.records.values() if r.status == "failed")
    try:
        items = catalog_items(scenes, options, warn=lambda message: _warn(warnings, log, message))
        where = write_catalog(dest, items, options)
        log(f"[translate] STAC catalog of {len(scenes)} scene(s): {where}")
    except Exception as err:  # noqa: BLE001 - the outputs are written; a catalog that fails is a warning
        _warn(warnings, log, f"the STAC catalog could not be written ({type(err).__name__}: {err})")
    model = manifest.run_model or {}
    try:
        title = f"s2o translate: {dest_uri}"
        write_file(dest, GALLERY_FILE, gallery_html(cards, errors, title, model).encode(), options)
        log(f"[translate] gallery: {storage.join(dest_uri, GALLERY_FILE)}")
    except Exception as err:  # noqa: BLE001 - as above
        _warn(warnings, log, f"the gallery could not be written ({type(err).__name__}: {err})")
    return warnings


def _quicklooks(
    record: SceneRecord, name, fresh, band, dest, listing, dest_fs, dest_root, options, warnings, log
):
    """The scene's quicklook files (asset key -> path relative to DEST), made where this run translated the scene
    or they are missing (`listing`: DEST's files, Manifest.listing)."""
    paths = {key: quicklook_name(name, key) for key in QUICKLOOK_SUFFIXES}

    def there(path: str) -> bool:
        return listing.has(dest_fs, path) if listing is not None else storage.exists(dest_fs, path)

    present = {k: p for k, p in paths.items() if there(storage.join(dest_root, p))}
    if record.scene not in fresh and {"quicklook", "sar_quicklook"} <= set(present):
        return present
    made: dict[str, str] = {}
    for path in present.values():  # made again below, or stale (a run without --uncertainty since)
        dest_fs.delete_file(storage.join(dest_root, path))
    try:
        looks = output_quicklooks(record.output, options)
        for key, data in looks.items():
            write_file(dest, paths[key], data, options)
            made[key] = paths[key]
    except Exception as err:  # noqa: BLE001 - one unreadable output must not stop the others' quicklooks
        _warn(warnings, log, f"no quicklook of {record.output}: {type(err).__name__}: {err}")
    try:
        scale = (record.scale or "").split(" ", 1)[
            0
        ] or None  # "linear (why)": the scale it was translated with
        write_file(dest, paths["sar_quicklook"], sar_quicklook(record.scene, band, scale, options), options)
        made["sar_quicklook"] = paths["sar_quicklook"]
    except Exception as err:  # noqa: BLE001 - the source may have moved since it was translated
        _warn(warnings, log, f"no SAR quicklook of {record.scene}: {type(err).__name__}: {err}")
    return made


def _read_grid(record: SceneRecord, manifest: Manifest, options, warnings, log) -> dict | None:
    """The grid of an output recorded by an older version, read from the output once: kept in its record, so the
    next run need not read it."""
    try:
        grid = read_output_grid(record.output, options)
    except Exception as err:  # noqa: BLE001 - one unreadable output must not keep the others out
        _warn(warnings, log, f"{record.output} left out of the catalog: {type(err).__name__}: {err}")
        return None
    manifest.amend(replace(record, grid=grid))
    return grid


def _source_datetime(uri: str, options) -> str | None:
    """The source file's TIFFTAG_DATETIME, when it has one and can still be opened (for records of older
    versions only: a run records it when it translates the scene)."""
    from s2o_platform.data.scene import open_dataset

    try:
        path, env = storage.gdal_path(uri, options)
        with open_dataset(path, env) as ds:
            return ds.tags().get("TIFFTAG_DATETIME")
    except Exception:  # noqa: BLE001 - no time is a fine answer: the item then says it has none
        return None


def _warn(warnings: list[str], log, message: str) -> None:
    warnings.append(message)
    log(f"[translate] warning: {message}")
