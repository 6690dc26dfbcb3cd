"""Named seeds derived from the run seed.

Every random component (data, order, model init, sampling, ...) receives its own
seed, derived by hashing the run seed with the component's name, so that changing
one component (for example the visiting order) never perturbs another (for
example the data). No library code seeds global random state.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(run_seed: int, *names: object) -> int:
    """Return a 63-bit seed derived from ``run_seed`` and a path of names."""
    text = "/".join([str(int(run_seed)), *(str(n) for n in names)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def numpy_rng(seed: int) -> np.random.Generator:
    """A numpy generator seeded with ``seed`` (a derived seed, or one a message carried)."""
    return np.random.default_rng(int(seed))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU torch generator seeded with ``seed`` (a derived seed, or one a message carried)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))
