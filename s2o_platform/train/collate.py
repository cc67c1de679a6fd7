"""Store rows -> training tensors: the collate function a training worker gives Ray Data's iterator."""

from __future__ import annotations

import numpy as np
import torch

from s2o_platform.data.store import decode_batch
from s2o_platform.data.transforms import augment_pairs

#: The columns a training worker reads from the store.
TRAIN_COLUMNS = ["tile_id", "sar", "optical", "tile_size", "sar_channels", "valid"]


def _collate_base():
    try:  # Ray Data's typed collate base (a plain function is deprecated there); plain object without Ray
        from ray.data.collate_fn import NumpyBatchCollateFn

        return NumpyBatchCollateFn
    except ImportError:  # pragma: no cover
        return object


class PairCollate(_collate_base()):
    """Store rows (numpy batch) -> {'sar', 'optical'} tensors on the device, augmented identically, and 'valid'
    (B, 1, H, W) where any tile of the batch has invalid pixels (the stages' losses then skip them)."""

    def __init__(self, augment: bool, rng: np.random.Generator, device: torch.device) -> None:
        super().__init__()
        self.augment, self.rng, self.device = augment, rng, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        decoded = decode_batch(batch)
        arrays = [decoded["sar"], decoded["optical"]]
        if "valid" in decoded:
            arrays.append(decoded["valid"][:, None].astype(np.float32))
        if self.augment:
            arrays = list(augment_pairs(arrays[0], arrays[1], self.rng, *arrays[2:]))
        names = ("sar", "optical", "valid")
        return {
            name: torch.from_numpy(array).to(self.device, non_blocking=True)
            for name, array in zip(names, arrays)
        }
