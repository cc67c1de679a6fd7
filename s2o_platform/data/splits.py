"""Train/val/test assignment by scene, never by tile (neighbouring tiles of a scene overlap).

Each scene gets a stable pseudo-random number u(scene, seed) in [0, 1) from a hash. Scenes are
ranked by u and the first round(n * test_fraction) go to test, the next round(n * val_fraction) to
val, the rest to train; a non-zero fraction gets at least one scene as long as one scene is left
for train. The ranking depends only on the scene ids and the seed, so the assignment is
deterministic and independent of input order. Scenes that are already in a store keep their split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from s2o_platform.errors import SettingsError

SPLITS = ("train", "val", "test")


def scene_uniform(scene_id: str, seed: int) -> float:
    """A stable number in [0, 1) for a scene and seed (first 8 bytes of sha256)."""
    digest = hashlib.sha256(f"{seed}:{scene_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _quota(n: int, fraction: float) -> int:
    return max(1, round(n * fraction)) if fraction > 0 else 0


def assign_splits(
    scene_ids: Iterable[str],
    test_fraction: float,
    val_fraction: float,
    seed: int,
    existing: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map every scene id to 'train', 'val' or 'test'.

    Args:
        scene_ids: scene ids (duplicates are ignored).
        test_fraction: fraction of scenes for test, in [0, 1).
        val_fraction: fraction of scenes for val, in [0, 1); test + val must be < 1.
        seed: changes the assignment.
        existing: scene -> split already recorded (e.g. in the store being appended to); kept as is.
    """
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise SettingsError(
            f"test_fraction ({test_fraction}) and val_fraction ({val_fraction}) must each be in [0, 1) "
            "and sum to less than 1"
        )
    existing = dict(existing or {})
    new = sorted(set(scene_ids) - set(existing), key=lambda s: (scene_uniform(s, seed), s))
    n = len(new)
    n_test = _quota(n, test_fraction)
    n_val = _quota(n, val_fraction)
    # Keep at least one scene for training when there are few scenes.
    while n_test + n_val >= n and n_test + n_val > 0:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    assignment = dict(existing)
    for i, scene in enumerate(new):
        assignment[scene] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment
