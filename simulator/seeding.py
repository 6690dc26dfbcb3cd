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


def numpy_rng(run_seed: int, *names: object) -> np.random.Generator:
    """A numpy generator for the named component."""
    return np.random.default_rng(derive_seed(run_seed, *names))


def torch_generator(run_seed: int, *names: object, device: str = "cpu") -> torch.Generator:
    """A torch generator for the named component."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(run_seed, *names))
    return gen
