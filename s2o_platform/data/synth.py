"""A procedural SEN12-like benchmark set: land-cover maps, optical colour and SAR backscatter.

Pure numpy; no I/O. A scene is made in three steps:
1. Land cover: five smooth random fields (Gaussian-filtered white noise), one per class, plus a
   class bias; each pixel takes the class of the largest field. Classes: water, vegetation,
   fields, urban, bare soil.
2. Optical (8-bit RGB): the class's mean colour plus class-specific smooth texture.
3. SAR (VV, dB): the class's mean backscatter plus smooth texture, turned into linear power and
   multiplied by Gamma(L, 1/L) speckle (L looks), then back to dB. Water is dark, urban bright.

The class is recoverable from local SAR statistics, so the optical image is predictable from the
SAR up to texture: a model that learns scores far above predicting the mean colour, and an oracle
that knows the class map bounds what any model can do. `baseline_psnr` measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("water", "vegetation", "fields", "urban", "bare_soil")
#: Mean optical colour per class (R, G, B), 8-bit.
CLASS_RGB = np.array(
    [
        [35, 60, 95],  # water: dark blue
        [45, 100, 45],  # vegetation: green
        [170, 165, 85],  # fields: yellow-green
        [150, 145, 150],  # urban: grey
        [165, 120, 80],  # bare soil: brown
    ],
    dtype=np.float64,
)
#: Mean VV backscatter per class in dB (water is a specular reflector, urban a double-bounce one).
CLASS_DB = np.array([-22.0, -7.5, -12.5, -1.5, -17.5])
#: Texture amplitude per class: optical (8-bit units) and SAR (dB).
CLASS_OPTICAL_TEXTURE = np.array([4.0, 14.0, 18.0, 22.0, 12.0])
CLASS_SAR_TEXTURE = np.array([0.5, 1.0, 1.0, 1.5, 0.7])
#: Class biases for the argmax, setting the class proportions.
CLASS_BIAS = np.array([-0.05, 0.1, 0.05, -0.15, 0.0])


@dataclass(frozen=True)
class SynthScene:
    classes: np.ndarray  # (H, W) uint8 class index
    optical: np.ndarray  # (H, W, 3) uint8
    sar_db: np.ndarray  # (H, W) float32, dB


def smooth_field(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~`scale` pixels (FFT filter)."""
    noise = rng.standard_normal((height, width))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    kernel = np.exp(-2.0 * (np.pi * scale) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(height, width))
    return (field - field.mean()) / (field.std() + 1e-12)


def land_cover(rng: np.random.Generator, height: int, width: int, scale: float = 12.0) -> np.ndarray:
    fields = np.stack([smooth_field(rng, height, width, scale) for _ in CLASSES])
    return np.argmax(fields + CLASS_BIAS[:, None, None], axis=0).astype(np.uint8)


def speckled_db(rng: np.random.Generator, mean_db: np.ndarray, looks: int) -> np.ndarray:
    """Backscatter in dB with L-look speckle: multiplicative Gamma(L, 1/L) noise on the *power* (not on dB),
    so the intensity keeps its mean and has variance mean^2 / L, as an L-look SAR intensity image does."""
    speckle = rng.gamma(shape=looks, scale=1.0 / looks, size=np.shape(mean_db))
    return 10.0 * np.log10(10.0 ** (np.asarray(mean_db) / 10.0) * speckle)


def make_scene(
    rng: np.random.Generator, height: int, width: int, looks: int = 4, scale: float = 12.0
) -> SynthScene:
    """One synthetic scene of `height` x `width` pixels."""
    classes = land_cover(rng, height, width, scale)
    texture = np.stack([smooth_field(rng, height, width, 2.0) for _ in range(3)], axis=-1)
    brightness = smooth_field(rng, height, width, 4.0)[..., None]
    optical = CLASS_RGB[classes] + CLASS_OPTICAL_TEXTURE[classes][..., None] * (
        0.5 * texture + 0.8 * brightness
    )
    sar_texture = smooth_field(rng, height, width, 3.0)
    mean_db = CLASS_DB[classes] + CLASS_SAR_TEXTURE[classes] * sar_texture
    sar_db = speckled_db(rng, mean_db, looks)
    return SynthScene(
        classes=classes,
        optical=np.clip(np.rint(optical), 0, 255).astype(np.uint8),
        sar_db=sar_db.astype(np.float32),
    )


def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (data range 1)."""
    mse = float(np.mean((np.asarray(prediction, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def baseline_psnr(optical_tiles: np.ndarray, class_tiles: np.ndarray) -> dict[str, float]:
    """Mean per-tile PSNR ([0, 1] images) of two reference predictors.

    - mean_colour: every pixel is the dataset's mean colour (what a model that ignores the SAR gets);
    - class_oracle: every pixel is the mean colour of its true class (needs the class map, which a
      model must infer from the speckled SAR; texture is unpredictable, so this is near the ceiling).

    Args:
        optical_tiles: (N, H, W, 3) uint8.
        class_tiles: (N, H, W) class indices.
    """
    target = optical_tiles.astype(np.float64) / 255.0
    mean_colour = target.reshape(-1, 3).mean(axis=0)
    class_means = np.zeros((len(CLASSES), 3))
    for c in range(len(CLASSES)):
        mask = class_tiles == c
        class_means[c] = target[mask].mean(axis=0) if mask.any() else mean_colour
    mean_scores = [psnr(np.broadcast_to(mean_colour, t.shape), t) for t in target]
    oracle_scores = [psnr(class_means[k], t) for k, t in zip(class_tiles, target)]
    return {"mean_colour": float(np.mean(mean_scores)), "class_oracle": float(np.mean(oracle_scores))}


def tile_statistics(optical: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-class sufficient statistics of one tile for `baselines_from_statistics`.

    Returns (5, 7) float64: per class [count, sum R, sum G, sum B, sum R^2, sum G^2, sum B^2]
    of the [0, 1] optical values, so baselines over any number of tiles can be computed exactly
    from statistics gathered by parallel workers.
    """
    target = optical.reshape(-1, 3).astype(np.float64) / 255.0
    labels = classes.reshape(-1)
    stats = np.zeros((len(CLASSES), 7))
    for c in range(len(CLASSES)):
        values = target[labels == c]
        stats[c, 0] = len(values)
        stats[c, 1:4] = values.sum(axis=0)
        stats[c, 4:7] = (values**2).sum(axis=0)
    return stats


def baselines_from_statistics(stats: np.ndarray) -> dict[str, float]:
    """The two baselines of `baseline_psnr`, from stacked `tile_statistics` (N, 5, 7)."""
    totals = stats.sum(axis=0)
    n_class = totals[:, 0]
    mean_colour = totals[:, 1:4].sum(axis=0) / n_class.sum()
    class_means = np.where(
        n_class[:, None] > 0, totals[:, 1:4] / np.maximum(n_class, 1)[:, None], mean_colour
    )
    pixels = stats[:, :, 0].sum(axis=1)  # per tile

    def mean_psnr(means_per_class: np.ndarray) -> float:
        # sum over pixels of (t - m)^2 = S2 - 2 m S1 + n m^2, per class and channel.
        sq_err = (
            stats[:, :, 4:7] - 2 * means_per_class * stats[:, :, 1:4] + stats[:, :, :1] * means_per_class**2
        )
        mse = sq_err.sum(axis=(1, 2)) / (3 * pixels)
        return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-20))))

    return {
        "mean_colour": mean_psnr(np.broadcast_to(mean_colour, (len(CLASSES), 3))),
        "class_oracle": mean_psnr(class_means),
    }
