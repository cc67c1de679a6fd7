"""STAC in and out for `s2o translate` (pystac): archives indexed the way providers publish them.

In: a SOURCE that is a STAC Item, an ItemCollection (a GeoJSON FeatureCollection of items) or a static Catalog /
Collection (`catalog.json`, `collection.json`, child links walked), local or s3://, becomes one scene per item:
the item's SAR asset (`--asset KEY`, else the asset whose `sar:polarizations` or key says VV, else the only data
asset), its href resolved against the item's own location (relative, absolute, s3:// or GDAL's /vsis3/). An item
without a usable asset is a per-scene error with its reason; the others go on.

Out: `catalog_items` describes every translated scene as a STAC Item (footprint and bbox in WGS84, the projection
extension, the source item's datetime, assets for the COG and its quicklooks, a link to the source item, the
model bundle's identity); `write_catalog` saves them as DEST/catalog.json, self-contained with relative links,
items under DEST/stac/, each file written atomically. It is rebuilt from the manifest on every run, so a re-run
updates it and never duplicates an item.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from s2o_platform import storage
from s2o_platform.errors import S2OError
from s2o_platform.translate.manifest import DATETIME_FROM_ITEM

#: What DEST holds for STAC clients: the root catalog, and one item file per scene under the items folder.
CATALOG_FILE = "catalog.json"
ITEMS_FOLDER = "stac"
CATALOG_ID = "s2o-translations"
#: The STAC object types a SOURCE may be.
STAC_TYPES = {
    "Feature": "Item",
    "FeatureCollection": "ItemCollection",
    "Catalog": "Catalog",
    "Collection": "Collection",
}
#: Roles and media types of the assets an output item carries.
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PNG_MEDIA_TYPE = "image/png"
_TIFF_MEDIA = ("image/tiff", "image/vnd.stac.geotiff", "application/geotiff")


class StacSourceError(S2OError, ValueError):
    """A SOURCE that is STAC JSON but cannot be read as an Item, ItemCollection, Catalog or Collection."""


@dataclass(frozen=True)
class StacScene:
    """One item of a STAC SOURCE: the SAR asset to translate (or why it cannot be), and what STAC out keeps."""

    item_id: str
    item_href: str | None  # where the item lives (for the output's link back to it)
    asset_href: str | None  # the SAR asset's location, as a local path or s3:// URI
    datetime: str | None  # the item's datetime (ISO 8601), or its start_datetime
    refused: str | None = None


def looks_like_stac(source: str) -> bool:
    """A SOURCE naming a .json file is taken as STAC (GeoTIFF sources never end in .json)."""
    return source.lower().rstrip("/").endswith(".json")


def stac_io(options: storage.StorageOptions | None):
    """A pystac StacIO that reads and writes through the project's storage layer (local paths, and s3:// with the
    run's endpoint); every write is atomic (`storage.write_bytes_atomic`)."""
    import pystac

    class StorageStacIO(pystac.StacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            href = str(getattr(source, "href", source))
            fs, path = storage.resolve(href, options)
            return storage.read_bytes(fs, path).decode("utf-8")

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            fs, path = storage.resolve(str(dest), options)
            storage.write_bytes_atomic(fs, path, txt.encode("utf-8"))

    return StorageStacIO()


def read_stac_source(
    source: str, asset_key: str | None = None, options: storage.StorageOptions | None = None
) -> list[StacScene]:
    """Every item of a STAC SOURCE, with its chosen SAR asset (see the module doc). Raises StacSourceError when
    the SOURCE itself cannot be read (not JSON, not STAC, a broken catalog)."""
    import pystac

    href = source if storage.is_uri(source) else os.path.abspath(os.path.expanduser(source))
    io = stac_io(options)
    try:
        raw = json.loads(io.read_text(href))
    except FileNotFoundError:
        raise StacSourceError(f"SOURCE {source}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StacSourceError(
            f"SOURCE {source}: cannot read it as STAC JSON ({type(err).__name__}: {err})"
        ) from None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in STAC_TYPES:
        raise StacSourceError(
            f"SOURCE {source} is JSON of type {kind!r}, not a STAC Item, ItemCollection (FeatureCollection), "
            "Catalog or Collection"
        )
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(raw, href=href, migrate=True)]
            items[0].set_self_href(href)
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(raw, preserve_dict=False))
            for (
                item
            ) in items:  # relative asset hrefs are relative to the collection file, which is the item's home
                if item.get_self_href() is None:
                    item.set_self_href(href)
        else:
            root = pystac.read_file(href, stac_io=io)
            items = list(root.get_items(recursive=True))
    except (pystac.STACError, KeyError, TypeError, ValueError, OSError) as err:
        raise StacSourceError(
            f"SOURCE {source}: not a readable STAC {STAC_TYPES[kind]} ({type(err).__name__}: {err})"
        ) from None
    if not items:
        raise StacSourceError(f"SOURCE {source} ({STAC_TYPES[kind]}) holds no items")
    return [_scene_of(item, asset_key, remote=storage.is_uri(href)) for item in items]


def _scene_of(item, asset_key: str | None, remote: bool) -> StacScene:
    when = item.datetime or item.common_metadata.start_datetime
    base = dict(
        item_id=item.id,
        item_href=item.get_self_href(),
        datetime=when.astimezone(timezone.utc).isoformat() if when else None,
    )
    key, why = choose_asset(item.assets, asset_key)
    if key is None:
        return StacScene(asset_href=None, refused=f"STAC item {item.id!r}: {why}", **base)
    href = item.assets[key].get_absolute_href()
    if href is None:
        return StacScene(
            asset_href=None,
            refused=f"STAC item {item.id!r}: asset {key!r} has a relative href and the item has no location to "
            "resolve it against",
            **base,
        )
    readable = _readable_href(href)
    if remote and not storage.is_uri(
        readable
    ):  # a catalog on object storage must not point this run at local files
        return StacScene(
            asset_href=None,
            refused=f"STAC item {item.id!r}: asset {key!r} is a local path ({href}) in a catalog on object "
            "storage; refused (copy the asset next to the catalog, or run from a local catalog)",
            **base,
        )
    return StacScene(asset_href=readable, **base)


def choose_asset(assets: dict, asset_key: str | None) -> tuple[str | None, str]:
    """The key of the SAR asset to translate, or (None, why not): `asset_key` when given; else the asset whose
    `sar:polarizations` is VV alone or whose key names VV; else the only data asset (role "data", or the only
    GeoTIFF)."""
    if asset_key is not None:
        if asset_key in assets:
            return asset_key, ""
        return None, f"no asset {asset_key!r} (it has {sorted(assets)}); choose one with --asset KEY"
    by_polarisation = [
        k
        for k, a in assets.items()
        if [str(p).upper() for p in a.extra_fields.get("sar:polarizations") or []] == ["VV"]
    ]
    by_key = [k for k in assets if re.search(r"(^|[^a-z])vv($|[^a-z])", k.lower())]
    for found in (by_polarisation, by_key):
        if len(found) == 1:
            return found[0], ""
    data = [k for k, a in assets.items() if "data" in (a.roles or [])]
    if len(data) == 1:
        return data[0], ""
    tiffs = [k for k, a in assets.items() if (a.media_type or "").split(";")[0].strip() in _TIFF_MEDIA]
    if len(tiffs) == 1:
        return tiffs[0], ""
    if not assets:
        return None, "it has no assets"
    return None, (f"no single VV or data asset among {sorted(assets)}: choose the SAR asset with --asset KEY")


def _readable_href(href: str) -> str:
    """A local path or s3:// URI for an asset href: GDAL's /vsis3/BUCKET/KEY becomes s3://BUCKET/KEY, file:// a path."""
    if href.startswith("/vsis3/"):
        return "s3://" + href[len("/vsis3/") :]
    if href.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(href).path)
    return href


def item_name(item_id: str) -> str:
    """The output name of an item's scene: its id, with characters that are not safe in a file name replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") or "item"
    return name


# -- STAC out ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputScene:
    """What the catalog says of one translated scene (from the manifest and the output itself)."""

    name: str  # the output's name (DEST/<name>.tif)
    output: str  # the COG's URI
    source: str  # the SAR scene's URI
    tiles: int
    seconds: float
    scale: str | None
    source_item: str | None = None  # the STAC item the scene came from
    datetime: str | None = None  # the source item's, else the source file's TIFFTAG_DATETIME
    datetime_source: str | None = None  # which of the two (said in the item where it is not the source item)
    quicklooks: tuple[tuple[str, str], ...] = ()  # (asset key, file name beside the COG)
    finished_at: float = 0.0  # when it was translated (the item's datetime where the source gave none)
    model: dict = field(default_factory=dict)  # what made it (translate/publish.model_identity)
    grid: dict | None = (
        None  # the output's grid (translate/writer.py: output_grid); None: left out of the catalog
    )


def catalog_items(
    scenes: Iterable[OutputScene],
    options: storage.StorageOptions | None,
    warn: Callable[[str], None] = print,
):
    """One pystac Item per translated scene: footprint and bbox in WGS84 from the COG's grid (as recorded), the
    projection extension (`proj:epsg` or `proj:wkt2`, `proj:transform`, `proj:shape`), datetime, the COG
    ("data") and quicklook ("overview") assets, a "derived_from" link to the source item and the model that made
    it (the bundle's identity) as `s2o:` properties. A scene without a grid is left out; one whose grid cannot be
    used is left out with `warn`. Reads nothing."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.crs import CRS
    from rasterio.transform import Affine, array_bounds
    from rasterio.warp import transform_bounds, transform_geom

    items = []
    for scene in scenes:
        if not scene.grid:  # its output could not be read (publish has said why)
            continue
        try:  # the grid as recorded when the output was written (translate/writer.py): nothing to read
            crs = CRS.from_wkt(scene.grid["crs_wkt"])
            transform, (height, width) = Affine(*scene.grid["transform"]), scene.grid["shape"]
            shape, bands = (height, width), scene.grid["bands"]
            bounds = array_bounds(height, width, transform)  # (left, bottom, right, top), as ds.bounds
        except Exception as err:  # noqa: BLE001 - one bad record must not keep the others out
            warn(f"{scene.output} left out of the catalog: {type(err).__name__}: {err}")
            continue
        left, bottom, right, top = bounds
        ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
        geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        bbox = list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
        when = _parse_datetime(scene.datetime)
        properties = {
            "s2o:source": scene.source,
            "s2o:tiles": scene.tiles,
            "s2o:seconds": scene.seconds,
            "s2o:sar_scale": scene.scale,
            "s2o:uncertainty_band": bands >= 4,
            **{f"s2o:{k}": v for k, v in scene.model.items()},
        }
        if when is None:  # STAC needs a time: say that this one is the translation's, not the acquisition's
            when = datetime.fromtimestamp(scene.finished_at, tz=timezone.utc)
            properties["s2o:datetime_is"] = "translation time: the source gave no acquisition time"
        elif scene.datetime_source not in (None, DATETIME_FROM_ITEM):
            properties["s2o:datetime_is"] = f"{scene.datetime_source} (may be when the file was written)"
        item = pystac.Item(
            id=scene.name.replace("/", "__"),
            geometry=geometry,
            bbox=bbox,
            datetime=when,
            properties=properties,
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        epsg = crs.to_epsg()
        projection.apply(
            epsg=epsg,
            wkt2=None if epsg else crs.to_wkt(),
            transform=list(transform)[:6],
            shape=list(shape),
        )
        item.add_asset(
            "data",
            pystac.Asset(
                href=scene.output,
                media_type=COG_MEDIA_TYPE,
                roles=["data"],
                title="optical-looking RGB" + (" + uncertainty band" if bands >= 4 else ""),
            ),
        )
        folder = scene.output.rsplit("/", 1)[0]
        for key, file_name in scene.quicklooks:
            item.add_asset(
                key,
                pystac.Asset(
                    href=f"{folder}/{file_name}",
                    media_type=PNG_MEDIA_TYPE,
                    roles=["overview"] if key == "quicklook" else ["visual"],
                    title=QUICKLOOK_TITLES.get(key, key),
                ),
            )
        if scene.source_item:
            item.add_link(pystac.Link("derived_from", scene.source_item, media_type="application/json"))
        items.append(item)
    return items


#: Titles of the PNG assets an item carries (translate/gallery.py writes them).
QUICKLOOK_TITLES = {
    "quicklook": "quicklook of the translation",
    "sar_quicklook": "quicklook of the SAR input",
    "uncertainty_quicklook": "uncertainty heat map",
}


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    for parse in (
        lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")),
        lambda t: datetime.strptime(t, "%Y:%m:%d %H:%M:%S"),  # TIFFTAG_DATETIME
    ):
        try:
            when = parse(text.strip())
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return None


def write_catalog(dest: str, items: list, options: storage.StorageOptions | None) -> str:
    """Save `items` as DEST/catalog.json with DEST/stac/<item id>.json, self-contained (relative links and asset
    hrefs), each file written atomically; returns the catalog's location."""
    import pystac
    from pystac.layout import CustomLayoutStrategy

    root = dest.rstrip("/") if storage.is_uri(dest) else storage.resolve(dest, options)[1]
    catalog = pystac.Catalog(
        id=CATALOG_ID,
        description="SAR scenes translated into optical-looking RGB by s2o-platform (`s2o translate`)",
        title="s2o translations",
    )
    for item in items:
        catalog.add_item(item)
    layout = CustomLayoutStrategy(
        item_func=lambda item, parent_dir: f"{parent_dir}/{ITEMS_FOLDER}/{item.id}.json"
    )
    catalog.normalize_hrefs(root, strategy=layout)
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=stac_io(options))
    return f"{root}/{CATALOG_FILE}"
