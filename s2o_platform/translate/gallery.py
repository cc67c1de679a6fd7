"""What a person looks at in DEST: a PNG quicklook per output (from the COG's overviews, never a full read), one of
its SAR input, a heat map of its uncertainty band where it has one, and DEST/index.html, a static page (opens from
disk, no server, no external scripts or fonts) with one card per scene side by side and the errors list.

Pure NumPy + rasterio + Pillow: quicklooks are decimated reads (`out_shape`), so GDAL serves them from the COG's
overview levels; a source without overviews is read decimated block by block, never whole into memory.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from s2o_platform import storage

#: The longest side of a quicklook, px.
QUICKLOOK_SIDE = 384
GALLERY_FILE = "index.html"
#: Every quicklook of a card is shown at this width, px, so that SAR, translation and uncertainty line up.
DISPLAY_SIDE = 300
#: File names beside DEST/<name>.tif, by asset key (stac.QUICKLOOK_TITLES says what each shows).
QUICKLOOK_SUFFIXES = {
    "quicklook": ".quicklook.png",
    "sar_quicklook": ".sar.png",
    "uncertainty_quicklook": ".uncertainty.png",
}


def quicklook_name(scene_name: str, key: str) -> str:
    """The file name (relative to DEST) of a scene's quicklook of kind `key`."""
    return scene_name + QUICKLOOK_SUFFIXES[key]


def _decimated_shape(height: int, width: int, side: int = QUICKLOOK_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _png(pixels: np.ndarray) -> bytes:
    """(H, W) grey, or (H, W, 3|4) RGB(A) uint8 -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def output_quicklooks(output_uri: str, options: storage.StorageOptions | None) -> dict[str, bytes]:
    """PNG quicklooks of a translated COG: "quicklook" (RGB, nodata transparent) and, where the COG has an
    uncertainty band, "uncertainty_quicklook" (a heat map scaled to its 99th percentile, nodata transparent)."""
    from rasterio.enums import Resampling

    from s2o_platform.data.scene import open_dataset

    path, env = storage.gdal_path(output_uri, options)
    with open_dataset(path, env) as ds:
        height, width = _decimated_shape(ds.height, ds.width)
        data = ds.read(out_shape=(ds.count, height, width), resampling=Resampling.average)
        float_output = ds.dtypes[0].startswith("float")
    if float_output:  # [0, 1] with NaN nodata
        valid = np.isfinite(data[:3]).all(axis=0)
        levels = np.clip(np.rint(np.nan_to_num(data, nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    else:  # 8-bit levels 1..255, 0 nodata
        valid = (data[:3] > 0).any(axis=0)
        levels = data.astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    looks = {"quicklook": _png(np.dstack([*levels[:3], alpha]))}
    if data.shape[0] >= 4:
        spread = np.where(valid, data[3].astype(np.float32), np.nan)
        looks["uncertainty_quicklook"] = _png(heat_map(spread))
    return looks


def heat_map(values: np.ndarray) -> np.ndarray:
    """(H, W) values, NaN where none -> (H, W, 4) uint8 RGBA in matplotlib's "magma", scaled from 0 to the 99th
    percentile of the finite values (one outlier does not wash the map out); NaN transparent."""
    from matplotlib import colormaps

    finite = np.isfinite(values)
    top = float(np.percentile(values[finite], 99)) if finite.any() else 1.0
    scaled = np.clip(np.nan_to_num(values, nan=0.0) / (top or 1.0), 0.0, 1.0)
    rgba = (colormaps["magma"](scaled) * 255.0).astype(np.uint8)
    rgba[..., 3] = np.where(finite, 255, 0)
    return rgba


def sar_quicklook(
    source_uri: str, band: str | int | None, scale: str | None, options: storage.StorageOptions | None
) -> bytes:
    """A grey PNG of the SAR input's band: a decimated read, in dB where `scale` (the one the scene was translated
    with, data.normalization.SarScale) is linear power or DN, stretched between the 2nd and 98th percentiles;
    nodata transparent."""
    from rasterio.enums import Resampling

    from s2o_platform.data.normalization import SarScale, to_db
    from s2o_platform.data.rasters import select_sar_band
    from s2o_platform.data.scene import open_dataset

    path, env = storage.gdal_path(source_uri, options)
    with open_dataset(path, env) as ds:
        index = select_sar_band(ds, source_uri, band)
        height, width = _decimated_shape(ds.height, ds.width)
        values = ds.read(index, out_shape=(height, width), resampling=Resampling.average, masked=True)
    nodata = np.ma.getmaskarray(values)
    raw = np.abs(values.filled(0)) if np.iscomplexobj(values) else values.filled(0).astype(np.float64)
    nodata |= ~np.isfinite(raw)
    if scale in (SarScale.LINEAR.value, SarScale.DN.value):
        raw = to_db(raw, scale).astype(np.float64)
    shown = raw[~nodata]
    low, high = np.percentile(shown, [2, 98]) if shown.size else (0.0, 1.0)
    grey = np.clip((np.nan_to_num(raw, nan=low) - low) / ((high - low) or 1.0), 0.0, 1.0)
    grey = np.rint(grey * 255.0).astype(np.uint8)
    alpha = np.where(nodata, 0, 255).astype(np.uint8)
    return _png(np.dstack([grey, grey, grey, alpha]))


@dataclass(frozen=True)
class Card:
    """One scene of the gallery."""

    name: str
    tiles: int
    seconds: float
    scale: str | None
    images: dict[str, str]  # asset key -> file name relative to DEST


def gallery_html(cards: list[Card], errors: list[tuple[str, str]], title: str, model: dict) -> str:
    """DEST/index.html: one card per scene (SAR and translation side by side, the uncertainty heat map beside
    them where there is one), the run's model, and the scenes that failed with their reasons. Plain HTML with
    inline CSS: it opens from disk, offline."""
    e = html.escape
    labels = {
        "sar_quicklook": "SAR",
        "quicklook": "translation",
        "uncertainty_quicklook": "uncertainty (brighter: the samples disagree more)",
    }
    parts = []
    for card in cards:
        figures = "".join(
            f'<figure><img src="{e(quote(card.images[key]))}" alt="{e(labels[key])} of {e(card.name)}" '
            f'data-kind="{key}" loading="lazy"><figcaption>{labels[key]}</figcaption></figure>'
            for key in ("sar_quicklook", "quicklook", "uncertainty_quicklook")
            if key in card.images
        )
        parts.append(
            f'<section class="card" data-scene="{e(card.name)}"><h2>{e(card.name)}</h2>'
            f'<div class="row">{figures}</div>'
            f"<p>{card.tiles} tiles &middot; SAR scale {e(card.scale or '?')} &middot; {card.seconds:.1f} s</p>"
            "</section>"
        )
    failed = "".join(f"<li><code>{e(uri)}</code>: {e(reason)}</li>" for uri, reason in errors)
    shown = {k: (str(v)[:12] if k == "bundle_sha256" else v) for k, v in model.items() if v is not None}
    model_text = ", ".join(f"{e(str(k))} {e(str(v))}" for k, v in shown.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.8rem; margin: 0 0 1rem; }}
.card h2 {{ font-size: 1rem; margin: 0 0 0.5rem; word-break: break-all; }}
.row {{ display: flex; gap: 0.8rem; flex-wrap: wrap; }}
figure {{ margin: 0; width: {DISPLAY_SIDE}px; }}
img {{ width: 100%; height: auto; image-rendering: pixelated; background: #eee
  repeating-conic-gradient(#ddd 0 25%, #f5f5f5 0 50%) 0 0 / 16px 16px; }}
figcaption {{ font-size: 0.8rem; color: #555; }}
.errors li {{ margin-bottom: 0.3rem; }}
</style></head>
<body>
<h1>{e(title)}</h1>
<p>{len(cards)} scene(s) translated; model: {model_text}. Each output's COG sits beside its quicklooks;
<a href="catalog.json">catalog.json</a> is the STAC catalog of them.</p>
{"".join(parts)}
<h2>Errors ({len(errors)})</h2>
<ul class="errors">{failed or "<li>none</li>"}</ul>
</body></html>
"""


def write_file(dest: str, relative: str, data: bytes, options: storage.StorageOptions | None) -> None:
    """DEST/relative, written atomically (local or s3://)."""
    fs, root = storage.resolve(dest, options)
    storage.write_bytes_atomic(fs, storage.join(root, relative), data)
