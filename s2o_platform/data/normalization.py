"""SAR and optical scaling: every raw input is mapped to the model's range [-1, 1] the same way.

Pure numpy, no I/O. The chain for SAR is

    raw (uint8 | dB | linear power | DN)  --to_db-->  dB  --clip to [lo, hi]-->  [-1, 1]

except for 8-bit input, which is taken as an already display-scaled SAR image and mapped
[0, 255] -> [-1, 1] directly (SEN1-2 patches are dB clipped to a window and stretched to 8 bit,
so this agrees with the dB window chain when the window is the same).

Which pixels are SAR at all, and how complex (SLC) pixels become real ones, is one rule too:
`sar_pixels` (palette, 1-bit and int8 data are refused with what to send instead).

The store records one `SarNormalization` in its metadata; training, evaluation, batch and online
inference all build it from there, so the four can never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from s2o_platform.errors import S2OError

#: Smallest linear power taken into log space; floors zeros instead of producing -inf dB.
LINEAR_POWER_FLOOR = 1e-10


class SarScale(str, enum.Enum):
    """How raw SAR values are expressed in a file."""

    AUTO = "auto"
    UINT8 = "uint8"  # display-scaled 8-bit image, taken as [0, 255] over the model's range
    DB = "db"  # backscatter in decibels (float)
    LINEAR = "linear"  # backscatter as linear power, sigma0 / gamma0 (float)
    DN = "dn"  # uint16 digital numbers (amplitude), as in Sentinel-1 GRD products


@dataclass(frozen=True)
class SarNormalization:
    """dB window normalisation of SAR backscatter.

    Args:
        clip_db: (lo, hi) window in dB mapped onto [-1, 1]; [-25, 0] is the usual VV window.
        dn_calibration_db: for DN input, dB = 20*log10(DN) - dn_calibration_db. 56 dB matches a
            Sentinel-1 IW GRD sigma0 calibration constant of about 630; set it from the product's
            calibration LUT when known.
    """

    clip_db: tuple[float, float] = (-25.0, 0.0)
    dn_calibration_db: float = 56.0
    kind: str = field(default="db_window")

    def __post_init__(self) -> None:
        lo, hi = self.clip_db
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
            raise ValueError(f"clip_db must be two finite numbers LO < HI, got {self.clip_db!r}")
        object.__setattr__(self, "clip_db", (float(lo), float(hi)))

    def db_to_model(self, db: np.ndarray) -> np.ndarray:
        """Clip dB values to the window and map linearly onto [-1, 1] (float32)."""
        lo, hi = self.clip_db
        clipped = np.clip(np.asarray(db, dtype=np.float32), lo, hi)
        return (2.0 * (clipped - lo) / (hi - lo) - 1.0).astype(np.float32)

    def model_to_db(self, x: np.ndarray) -> np.ndarray:
        """Inverse of `db_to_model` inside the window."""
        lo, hi = self.clip_db
        return ((np.asarray(x, dtype=np.float32) + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)

    def to_model(self, raw: np.ndarray, scale: SarScale | str) -> np.ndarray:
        """Map raw SAR values in the given scale onto the model's range [-1, 1]."""
        scale = SarScale(scale)
        if scale is SarScale.AUTO:
            raise ValueError("resolve SarScale.AUTO with detect_sar_scale() before normalising")
        if scale is SarScale.UINT8:
            return uint8_to_model(raw)
        return self.db_to_model(to_db(raw, scale, self.dn_calibration_db))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clip_db"] = list(self.clip_db)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SarNormalization:
        if d.get("kind", "db_window") != "db_window":
            raise ValueError(
                f"unknown SAR normalisation kind {d.get('kind')!r}; this version knows 'db_window'"
            )
        return cls(clip_db=tuple(d["clip_db"]), dn_calibration_db=float(d.get("dn_calibration_db", 56.0)))


def uint8_to_model(raw: np.ndarray) -> np.ndarray:
    """[0, 255] -> [-1, 1] (float32)."""
    return (np.asarray(raw, dtype=np.float32) / 127.5 - 1.0).astype(np.float32)


def model_to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 255] uint8, rounding and clipping."""
    return np.clip(np.rint((np.asarray(x, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_db(raw: np.ndarray, scale: SarScale | str, dn_calibration_db: float = 56.0) -> np.ndarray:
    """Convert raw SAR values to decibels (float32). Non-positive power/DN map to the floor."""
    scale = SarScale(scale)
    values = np.asarray(raw, dtype=np.float64)
    if scale is SarScale.DB:
        return values.astype(np.float32)
    if scale is SarScale.LINEAR:
        return (10.0 * np.log10(np.maximum(values, LINEAR_POWER_FLOOR))).astype(np.float32)
    if scale is SarScale.DN:
        # DN is amplitude: power ~ DN^2 / A^2, so dB = 20 log10(DN) - 20 log10(A).
        amplitude_floor = np.sqrt(LINEAR_POWER_FLOOR)
        return (20.0 * np.log10(np.maximum(values, amplitude_floor)) - dn_calibration_db).astype(np.float32)
    raise ValueError(f"to_db() does not take scale {scale.value!r}")


def detect_sar_scale(
    values: np.ndarray, dtype: str | np.dtype, units_hint: str | None = None
) -> tuple[SarScale, str]:
    """Guess how SAR values are expressed, and say why.

    The rule, in order:
      1. uint8 data -> 8-bit display-scaled image;
      2. uint16 / int16 / uint32 integer data -> DN (amplitude digital numbers);
      3. a units hint from file metadata ('db'/'decibel' or 'linear'/'power'/'amplitude') wins for floats;
      4. floats with any negative finite value -> dB (power is never negative);
      5. non-negative floats whose 99th percentile is below 10 -> linear power
         (sigma0 rarely exceeds 10, i.e. +10 dB, except in rare corner reflectors);
      6. otherwise -> dB (non-negative dB only happens for very bright targets).

    Args:
        values: a sample of the raw values (any shape; nodata already removed or masked as NaN).
        dtype: the file's data type.
        units_hint: free text from metadata (band description, units or tags), if any.
    """
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return SarScale.UINT8, "8-bit data: taken as a display-scaled SAR image"
    if np.issubdtype(dt, np.integer):
        return SarScale.DN, f"{dt.name} integer data: taken as digital numbers (amplitude)"
    if units_hint:
        hint = units_hint.lower()
        if "db" in hint or "decibel" in hint:
            return SarScale.DB, f"metadata says {units_hint!r}: dB"
        if any(word in hint for word in ("linear", "power", "gamma0", "sigma0", "beta0")):
            return SarScale.LINEAR, f"metadata says {units_hint!r}: linear power"
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return SarScale.DB, "no finite values to inspect: assumed dB"
    if finite.min() < 0:
        return SarScale.DB, f"float data with negative values (min {finite.min():.1f}): dB"
    p99 = float(np.percentile(finite, 99))
    if p99 < 10.0:
        return SarScale.LINEAR, f"non-negative float data, 99th percentile {p99:.3g} < 10: linear power"
    return SarScale.DB, f"non-negative float data, 99th percentile {p99:.3g} >= 10: dB"


#: Real pixel types taken as SAR values as they are (`detect_sar_scale` says how they are scaled).
SAR_REAL_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Complex pixel types (single-look complex, SLC), detected into real values first (see `SarPixels`).
SAR_COMPLEX_DTYPES = ("complex_int16", "complex64", "complex128")
#: What to send instead, in every refusal of `sar_pixels`.
_SEND_INSTEAD = (
    "send one SAR band as 8-bit greyscale (display-scaled), 16/32-bit integer DN, float32/64 "
    "dB or linear power, or complex SLC"
)


class UnsupportedSarPixels(S2OError, ValueError):
    """Pixels no SAR scale can be given to; the message says what to send instead."""


@dataclass(frozen=True)
class SarPixels:
    """How one SAR band's pixels are taken, by the one rule of `sar_pixels` (online serving and archive
    translation both go through it).

    Real types (SAR_REAL_DTYPES) are taken as they are. Complex SLC pixels are detected first, since a
    complex value is neither dB nor power: complex integers (CInt16, e.g. Sentinel-1 / GF-3 SLC counts)
    become their amplitude |z| as digital numbers (DN); complex floats become intensity |z|^2, taken as
    linear power when its 99th percentile is below 10 (calibrated SLC) and otherwise as amplitude |z| in
    DN (uncalibrated SLC counts). An explicit scale picks the matching detection: DN -> |z|,
    linear -> |z|^2; dB and uint8 do not apply to complex values.
    """

    dtype: str  # the file's pixel type

    @property
    def complex(self) -> bool:
        return self.dtype in SAR_COMPLEX_DTYPES

    def check_scale(self, scale: SarScale | str) -> SarScale:
        """The scale, or UnsupportedSarPixels when it cannot describe these pixels."""
        scale = SarScale(scale)
        if self.complex and scale not in (SarScale.DN, SarScale.LINEAR):
            raise UnsupportedSarPixels(
                f"complex ({self.dtype}) SLC values are amplitude or intensity, not "
                f"{scale.value}: take them as dn (|z|) or linear (|z|^2 power)"
            )
        return scale

    def detect_scale(self, values: np.ndarray, units_hint: str | None = None) -> tuple[SarScale, str]:
        """`detect_sar_scale` for these pixels: `values` a sample of the raw values, nodata as NaN."""
        if not self.complex:
            return detect_sar_scale(values, self.dtype, units_hint)
        if self.dtype == "complex_int16":
            return SarScale.DN, f"{self.dtype} SLC: amplitude |z| taken as digital numbers"
        intensity = np.abs(np.asarray(values)).astype(np.float64) ** 2
        intensity = intensity[np.isfinite(intensity)]
        p99 = float(np.percentile(intensity, 99)) if intensity.size else 0.0
        if p99 < 10.0:
            return (
                SarScale.LINEAR,
                f"{self.dtype} SLC, intensity |z|^2 99th percentile {p99:.3g} < 10: linear power",
            )
        return (
            SarScale.DN,
            f"{self.dtype} SLC, intensity |z|^2 99th percentile {p99:.3g} >= 10: amplitude |z| as DN",
        )

    def resolve_scale(
        self, requested: SarScale | str, sample, units_hint: str | None = None
    ) -> tuple[SarScale, str]:
        """The one SAR-scale resolver (ingest, archive translation, serving and the Python API): `requested`
        when it is not auto (checked against these pixels), else detected from `sample` (raw values of the
        band, an array or a masked array whose mask is nodata; `scale_sample` prepares it) and the metadata's
        units hint. Returns the scale and why it was chosen."""
        requested = SarScale(requested)
        if requested is not SarScale.AUTO:
            return self.check_scale(requested), f"given: {requested.value}"
        return self.detect_scale(scale_sample(sample), units_hint)

    def to_real(self, raw: np.ndarray, scale: SarScale | str) -> np.ndarray:
        """The values `scale` describes: `raw` itself for real pixels, |z| (DN) or |z|^2 (linear) for complex
        ones. Masked arrays keep their mask."""
        if not self.complex:
            return raw
        scale = self.check_scale(scale)
        amplitude = abs(raw).astype(np.float64)
        return amplitude if scale is SarScale.DN else amplitude**2


def sar_pixels(dtype: str, *, palette: bool = False, bits: int | None = None) -> SarPixels:
    """The rule for which SAR pixels are taken, and how (see SarPixels); raises UnsupportedSarPixels.

    Args:
        dtype: the band's pixel type (rasterio's names: uint8, int16, float32, complex_int16, complex64, ...).
        palette: the band is colour-mapped (a palette PNG or TIFF): its values are colour indices.
        bits: bits per pixel where fewer than the type holds (1-bit PNG, TIFF NBITS), else None.
    """
    if bits is not None and bits < 8:
        raise UnsupportedSarPixels(
            f"a {bits}-bit image holds {2**bits} levels, not backscatter: {_SEND_INSTEAD}"
        )
    if palette:
        raise UnsupportedSarPixels(
            f"a palette (colour-mapped) image holds colour indices, not backscatter: {_SEND_INSTEAD}"
        )
    if dtype in SAR_REAL_DTYPES or dtype in SAR_COMPLEX_DTYPES:
        return SarPixels(dtype)
    if dtype == "int8":
        raise UnsupportedSarPixels(
            f"signed 8-bit (int8) data is neither a display-scaled image (0..255) nor SAR "
            f"digital numbers: {_SEND_INSTEAD}"
        )
    raise UnsupportedSarPixels(f"pixel type {dtype} is not taken as SAR: {_SEND_INSTEAD}")


#: Pillow mode of a one-band image -> (numpy type of its pixels, bits per pixel, colour-mapped): what `sar_pixels`
#: is given for a PNG/JPEG body (the HTTP service) or a PIL image (the Python API).
PILLOW_MODES = {
    "1": ("uint8", 1, False),
    "L": ("uint8", 8, False),
    "P": ("uint8", 8, True),
    "I;16": ("uint16", 16, False),
    "I;16L": ("uint16", 16, False),
    "I;16B": ("uint16", 16, False),
    "I": ("int32", 32, False),
    "F": ("float32", 32, False),
}


def model_pixels(raw, dtype: str, scale: str, norm: SarNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Raw SAR pixels of type `dtype` (an array, or a masked array whose mask is nodata) in `scale` -> values in
    the model's range (float32; nodata, NaN and infinite pixels -1) and their bool validity: the one rule for
    what archive translation reads and what the Python API (`S2OPipeline`) is given."""
    masked = sar_pixels(dtype).to_real(raw, scale)  # complex SLC -> |z| or |z|^2; real: as it is
    values = np.asarray(np.ma.filled(masked, 0), dtype=np.float64)
    valid = ~np.ma.getmaskarray(masked) & np.isfinite(values)
    model = norm.to_model(np.where(valid, values, 1.0), scale)
    return np.where(valid, model, -1.0).astype(np.float32), valid


def scale_sample(sample) -> np.ndarray:
    """The values scale detection (`SarPixels.detect_scale`) is given from a sample of a band (masked where
    nodata): NaN-filled floats and complex values, the unmasked values of integers."""
    sample = np.ma.asarray(sample)
    if np.issubdtype(sample.dtype, np.complexfloating):
        return sample.filled(np.nan)
    return np.asarray(
        sample.filled(np.nan) if np.issubdtype(sample.dtype, np.floating) else sample.compressed(),
        dtype=np.float64,
    )


@dataclass(frozen=True)
class OpticalNormalization:
    """Optical imagery to 8-bit RGB and from there to [-1, 1].

    8-bit input is used as it is. Integer reflectance (Sentinel-2 L1C/L2A: reflectance x 10000)
    and float reflectance are stretched linearly from 0 to `display_max_reflectance` onto [0, 255],
    the usual true-colour stretch for Sentinel-2.
    """

    display_max_reflectance: float = 0.3
    reflectance_scale: float = 10000.0

    def to_uint8(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.dtype == np.uint8:
            return raw
        reflectance = raw.astype(np.float64)
        if np.issubdtype(raw.dtype, np.integer):
            reflectance = reflectance / self.reflectance_scale
        scaled = np.clip(reflectance / self.display_max_reflectance, 0.0, 1.0) * 255.0
        return np.rint(scaled).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpticalNormalization:
        return cls(**d)
