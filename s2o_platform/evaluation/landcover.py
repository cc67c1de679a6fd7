"""Land-cover agreement of translated tiles (the "FCN-score" protocol of the pix2pix paper, Isola et al. 2017).

A small per-pixel classifier is fitted on the *ground-truth* optical tiles of the store's train split
and their class maps; it then classifies each translated test tile, scored against the true classes.
A translation that keeps the land cover readable scores near the classifier's accuracy on the real
optical test tiles (`heldout_accuracy`); a blur or a colour cast that moves pixels across class
colours scores lower. Nothing is downloaded: the classifier is fitted in a few seconds on the CPU.

Pure torch (and the store's class-map convention): no Ray, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s2o_platform.data.store import UNLABELLED

#: Fitting budget: optimizer steps over random batches of train tiles (a few seconds at 32 px on 2 cores).
FIT_STEPS = 300
FIT_BATCH = 32
#: Tiles per classifier forward pass when scoring (bounds memory at large tile sizes).
CHUNK = 64


class PixelClassifier(torch.nn.Module):
    """Optical RGB in [0, 1] (N, 3, H, W) -> class logits (N, K, H, W); a 5x5 receptive field."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1, padding_mode="replicate"),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate"),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, unit_rgb: torch.Tensor) -> torch.Tensor:
        return self.net(unit_rgb * 2.0 - 1.0)


@dataclass
class FittedClassifier:
    model: PixelClassifier
    train_accuracy: float
    train_tiles: int

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


def fit_classifier(
    optical_unit: np.ndarray, labels: np.ndarray, num_classes: int, steps: int = FIT_STEPS, seed: int = 0
) -> FittedClassifier:
    """Fit on ground-truth optical tiles (N, 3, H, W) in [0, 1] and their class maps (N, H, W) of ints < num_classes."""
    if len(optical_unit) == 0 or len(optical_unit) != len(labels):
        raise ValueError(
            f"the classifier needs tiles with class maps; got {len(optical_unit)} tiles, {len(labels)} maps"
        )
    labelled = labels[labels != UNLABELLED]
    if labelled.size == 0:
        raise ValueError("the class maps hold no labelled pixel")
    if labelled.max() >= num_classes:
        raise ValueError(f"class map value {int(labelled.max())} is not below num_classes={num_classes}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PixelClassifier(num_classes)
    x = torch.as_tensor(optical_unit, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(FIT_BATCH, len(x)),), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx], ignore_index=UNLABELLED)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == int(steps * 0.7):  # a simple step decay: settle after the fast phase
            for group in optimizer.param_groups:
                group["lr"] = 2e-3
    model.eval().requires_grad_(False)
    confusion = confusion_per_tile(model, x, labels)
    return FittedClassifier(model, accuracy(confusion.sum(axis=0)) or 0.0, len(x))


@torch.no_grad()
def confusion_per_tile(model: PixelClassifier, unit_rgb: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """(N, K*K) int64 confusion counts per tile: row = true class, column = class of the (translated) pixel.
    Unlabelled pixels are not counted."""
    k = model.num_classes
    images = torch.as_tensor(unit_rgb, dtype=torch.float32)
    predicted = torch.cat(
        [model(images[i : i + CHUNK]).argmax(dim=1).flatten(1) for i in range(0, len(images), CHUNK)]
    ).numpy()
    truth = np.asarray(labels, dtype=np.int64).reshape(len(predicted), -1)
    codes = truth * k + predicted
    # classes the classifier was not fitted with count as unlabelled, like UNLABELLED itself
    return np.stack([np.bincount(c[t < k], minlength=k * k) for c, t in zip(codes, truth)]).astype(np.int64)


def num_classes_of(*class_maps: np.ndarray) -> int:
    """Classes 0..K-1 seen in the class maps (unlabelled pixels aside)."""
    top = max((int(m[m != UNLABELLED].max()) for m in class_maps if (m != UNLABELLED).any()), default=-1)
    if top < 0:
        raise ValueError("the class maps hold no labelled pixel")
    return top + 1


def accuracy(confusion: np.ndarray) -> float | None:
    """Pixel accuracy of a summed confusion (K*K,) or (K, K); None when no labelled pixel was scored."""
    c = _square(confusion)
    return float(np.trace(c) / c.sum()) if c.sum() else None


def mean_iou(confusion: np.ndarray) -> float | None:
    """Mean intersection-over-union over the classes present in the truth or the prediction; None when empty."""
    c = _square(confusion)
    tp = np.diag(c).astype(np.float64)
    union = c.sum(axis=0) + c.sum(axis=1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else None


def _square(confusion: np.ndarray) -> np.ndarray:
    c = np.asarray(confusion)
    k = int(round(np.sqrt(c.size)))
    if k * k != c.size:
        raise ValueError(f"a confusion matrix has K*K entries, got {c.size}")
    return c.reshape(k, k)
