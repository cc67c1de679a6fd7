"""How `train.seed` becomes the seeds of a run's data order (pure; no Ray here).

Two shuffles order the tiles a run sees:

  SPLIT  the split-wide shuffle on the driver (train/launcher.py `training_dataset`): `random_shuffle` of a
         materialised split, `randomize_block_order` of a streamed one. Seeded with
         shuffle_seed(train.seed, SPLIT) through Ray Data's RandomSeedConfig(reseed_after_execution=True),
         which folds in the execution index: every epoch has its own order, the same in every run with that seed.
  LOCAL  each worker's local shuffle buffer (streamed splits; train/harness.py), rebuilt every epoch with
         shuffle_seed(train.seed, LOCAL, rank, epoch).
"""

from __future__ import annotations

import numpy as np

SPLIT = 0
LOCAL = 1
_WORD = 2**32


def shuffle_seed(seed: int, stream: int, rank: int = 0, epoch: int = 0) -> int:
    """The 32-bit seed of one data shuffle of a run seeded `seed` (any int, negative too).

    Independent for every (seed, stream, rank, epoch): NumPy's SeedSequence hashes a fixed number of 32-bit
    words (the 64-bit seed as two, then stream, rank, epoch), so no two keys share an input.
    """
    if not 0 <= stream < _WORD or not 0 <= rank < _WORD or not 0 <= epoch < _WORD:
        raise ValueError(f"stream, rank and epoch must be in [0, 2**32): got {stream}, {rank}, {epoch}")
    value = seed % 2**64
    words = [value % _WORD, value // _WORD, stream, rank, epoch]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
