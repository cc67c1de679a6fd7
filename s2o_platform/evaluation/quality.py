"""Quality of translated tiles against ground truth, on images in [0, 1].

Per tile: PSNR and SSIM (torchmetrics, data range 1) and the mean per-channel colour error (|mean
predicted colour - mean true colour| averaged over R, G, B, in 0-255 units: the colour cast METHOD.md
warns about). PSNR and SSIM reward blur, so per tile also the sums that the set-level ratios need:
- sharpness_ratio = mean gradient magnitude of the predictions / that of the ground truth
  (1.0: as sharp as the truth; blur < 1, noise > 1);
- identity_ratio = mean |prediction - SAR| / mean |prediction - ground truth| (a model that copies
  its input scores below 1);
and `paired_difference`, a bootstrap interval on the per-tile PSNR difference of two settings. FID: features from a user-supplied Inception-v3 FID network, accumulated as moments and
compared by torchmetrics' FrechetInceptionDistance; never a number from another network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from s2o_platform.errors import S2OError
from s2o_platform.evaluation.uncertainty import UNCERTAINTY_PIXELS_PER_TILE
from s2o_platform.losses import masked_mean

#: A tile predicted exactly has infinite PSNR; capped so that means and JSON stay finite.
PSNR_CAP_DB = 100.0
FID_SKIPPED = "FID skipped: no Inception weights (pass --fid-weights PATH)"


def to_unit(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> [0, 1] float32 tensor (non-finite values kept, so they can be detected)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return ((t + 1.0) / 2.0).clamp(0.0, 1.0).where(torch.isfinite(t), t)


def gradient_magnitude(images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean gradient magnitude of (N, C, H, W) images: forward differences, averaged over channels
    (and over the pixels whose three stencil pixels are all valid, given `valid` (N, H, W))."""
    dy = images[:, :, 1:, :-1] - images[:, :, :-1, :-1]
    dx = images[:, :, :-1, 1:] - images[:, :, :-1, :-1]
    magnitude = torch.sqrt(dx**2 + dy**2)
    if valid is None:
        return magnitude.flatten(1).mean(dim=1)
    stencil = valid[:, :-1, :-1] & valid[:, 1:, :-1] & valid[:, :-1, 1:]
    return masked_mean(magnitude, stencil[:, None], per_sample=True)


def tile_scores(
    prediction: torch.Tensor,
    target: torch.Tensor,
    sar: torch.Tensor | None = None,
    valid: torch.Tensor | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-tile scores of (N, 3, H, W) images in [0, 1].

    Returns float64 arrays of length N: psnr (dB, capped at PSNR_CAP_DB), ssim, colour_error (0-255), finite (1.0 when
    every pixel of the prediction is finite), grad_pred / grad_true (mean gradient magnitudes, for sharpness_ratio),
    and, given the SAR input (N, C, H, W) in [0, 1], abs_to_sar / abs_to_truth (mean absolute differences of the
    prediction to the SAR's first channel and to the truth, for identity_ratio). Scores of non-finite tiles are NaN.
    valid (N, H, W) bool: the tiles' pixels that hold data; every score ignores the others (they are set to 0 in
    prediction, truth and SAR alike, and left out of every mean), so an invalid pixel's value changes no score.
    """
    finite = torch.isfinite(prediction).flatten(1).all(dim=1)
    safe = torch.where(finite[:, None, None, None], prediction, torch.zeros_like(prediction))
    if valid is not None:
        valid = torch.as_tensor(np.asarray(valid, dtype=bool))
        if bool(valid.all()):
            valid = None
    if valid is None:
        psnr = peak_signal_noise_ratio(safe, target, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(
            max=PSNR_CAP_DB
        )
        ssim = structural_similarity_index_measure(safe, target, data_range=1.0, reduction="none")
        colour = (safe.mean(dim=(2, 3)) - target.mean(dim=(2, 3))).abs().mean(dim=1) * 255.0
    else:
        keep = valid[:, None]
        safe, target = (torch.where(keep, x, torch.zeros_like(x)) for x in (safe, target))
        sar = None if sar is None else torch.where(keep, sar, torch.zeros_like(sar))
        mse = masked_mean((safe - target) ** 2, keep, per_sample=True)
        psnr = (10.0 * torch.log10(1.0 / mse.clamp(min=1e-20))).clamp(max=PSNR_CAP_DB)
        _, ssim_map = structural_similarity_index_measure(
            safe, target, data_range=1.0, reduction="none", return_full_image=True
        )
        ssim = masked_mean(ssim_map, keep, per_sample=True)
        pixels = keep.flatten(1).sum(1).clamp(min=1)[:, None]
        colour = ((safe.flatten(2).sum(2) - target.flatten(2).sum(2)) / pixels).abs().mean(dim=1) * 255.0
    nan = torch.full_like(psnr, float("nan"))
    scores = {
        "psnr": psnr,
        "ssim": ssim,
        "colour_error": colour,
        "grad_pred": gradient_magnitude(safe, valid),
        "grad_true": gradient_magnitude(target, valid),
    }
    if sar is not None:
        keep = None if valid is None else valid[:, None]
        scores["abs_to_sar"] = masked_mean((safe - sar[:, :1]).abs(), keep, per_sample=True)
        scores["abs_to_truth"] = masked_mean((safe - target).abs(), keep, per_sample=True)
    out = {k: torch.where(finite, v.float(), nan).double().numpy() for k, v in scores.items()}
    out["finite"] = finite.double().numpy()
    return out


def uncertainty_pixels(
    spread: np.ndarray,
    prediction: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | np.ndarray | None = None,
    per_tile: int = UNCERTAINTY_PIXELS_PER_TILE,
) -> dict[str, np.ndarray]:
    """A fixed sample of each tile's pixels (the same positions in every tile, one fixed draw, so the pass in this
    process and the Ray Data pass keep the same pixels): the predicted spread (`translate_tiles_with_uncertainty`'s, in model
    units, halved to [0, 1] units) and the actual absolute error of the prediction (N, 3, H, W) in [0, 1] against
    the target, averaged over RGB as the spread is. Returns {"unc_spread", "unc_error"}: float64 (N, P) arrays,
    NaN where the pixel holds no data (`valid` (N, H, W) False) or the prediction is not finite."""
    n, h, w = spread.shape
    positions = np.sort(np.random.default_rng(0).choice(h * w, size=min(per_tile, h * w), replace=False))
    picked_spread = np.asarray(spread, dtype=np.float64).reshape(n, -1)[:, positions] / 2.0
    error = (prediction.double() - target.double()).abs().mean(dim=1).reshape(n, -1).numpy()[:, positions]
    if valid is not None:
        holds_data = np.asarray(valid, dtype=bool).reshape(n, -1)[:, positions]
        picked_spread = np.where(holds_data, picked_spread, np.nan)
        error = np.where(holds_data, error, np.nan)
    return {"unc_spread": picked_spread, "unc_error": error}


def ratio_of_means(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    """sum(numerator) / sum(denominator) over tiles (equal pixel counts, so a ratio of means); None if 0/0."""
    total = float(np.sum(denominator))
    return None if total == 0.0 else float(np.sum(numerator)) / total


def paired_difference(
    values: np.ndarray, reference: np.ndarray, resamples: int = 2000, seed: int = 0
) -> dict[str, object]:
    """Mean per-tile difference values - reference over the same tiles, with a 95% percentile-bootstrap interval.

    Tiles, not pixels, are resampled: the tiles are the independent units. Returns {"delta": X, "ci95": [LO, HI]}.
    """
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if values.shape != reference.shape or values.ndim != 1 or len(values) == 0:
        raise ValueError(
            f"paired scores need two equal, non-empty 1-D arrays, got {values.shape} and {reference.shape}"
        )
    diff = values - reference
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95": [float(low), float(high)]}


def to_uint8_images(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 (N, 3, H, W), the input the standard FID network takes."""
    return (unit.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------


class FidError(S2OError, ValueError):
    """--fid-weights that cannot be used."""


class InceptionFeatures(torch.nn.Module):
    """uint8 images (N, 3, H, W) -> pool features (N, D) of an Inception-v3 FID network.

    Accepted weights: a TorchScript FID network (e.g. NVIDIA's `inception-2015-12-05.pt`, called with
    `return_features=True`, resizing to 299 px itself), or a torch-fidelity weights file
    (`pt_inception-2015-12-05-*.pth`) where torch-fidelity is installed.
    """

    def __init__(self, network: torch.nn.Module, takes_return_features: bool):
        super().__init__()
        self.network = network
        self.takes_return_features = takes_return_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError("InceptionFeatures takes uint8 images in [0, 255]")
        if self.takes_return_features:
            return self.network(images, return_features=True).float()
        return self.network(images).float()


def load_fid_network(path: str | Path, device: torch.device) -> InceptionFeatures:
    path = Path(path)
    if not path.is_file():
        raise FidError(f"--fid-weights {path}: no such file")
    try:
        network = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as jit_error:
        return _torch_fidelity_network(path, device, jit_error)
    probe = torch.zeros(1, 3, 299, 299, dtype=torch.uint8, device=device)
    with torch.no_grad():
        for takes in (True, False):
            try:
                out = network(probe, return_features=True) if takes else network(probe)
            except (RuntimeError, TypeError):
                continue
            if isinstance(out, torch.Tensor) and out.ndim == 2:
                return InceptionFeatures(network, takes)
    raise FidError(
        f"--fid-weights {path}: a TorchScript module, but not one that maps uint8 images to (N, D) features"
    )


def _torch_fidelity_network(path: Path, device: torch.device, jit_error: Exception) -> InceptionFeatures:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise FidError(
            f"--fid-weights {path} is not a TorchScript FID network ({jit_error}); weights files in "
            "torch-fidelity's format need torch-fidelity installed"
        ) from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        network = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
    except Exception as err:  # noqa: BLE001 - torch-fidelity raises many kinds
        raise FidError(
            f"--fid-weights {path}: cannot load as a torch-fidelity Inception weights file: {err}"
        ) from None
    return InceptionFeatures(network.to(device).eval(), takes_return_features=False)


class _PassThrough(torch.nn.Module):
    """Features are computed once (locally or in Ray actors); torchmetrics only compares their moments."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_metric(num_features: int):
    """A torchmetrics FrechetInceptionDistance fed with precomputed features via `.update(features, real)`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_PassThrough(num_features), reset_real_features=False)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (N, D) with torchmetrics' computation (needs N >= 2 on both sides)."""
    if len(real) < 2 or len(fake) < 2:
        raise FidError("FID needs at least 2 images on each side")
    metric = fid_metric(real.shape[1])
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    return float(metric.compute())


def inception_features(network: InceptionFeatures, unit: torch.Tensor) -> np.ndarray:
    device = next(network.parameters(), torch.empty(0)).device
    images = to_uint8_images(unit.nan_to_num(0.0)).to(device)
    return network(images).double().cpu().numpy()


@dataclass
class SettingOutput:
    scores: dict[str, np.ndarray]  # per tile
    features: np.ndarray | None  # FID features of the predictions (N, D)
    predictions: np.ndarray  # the first few predictions, [0, 1], (n, 3, H, W)
    real_features: np.ndarray | None = None  # FID features of the same tiles' ground truth
