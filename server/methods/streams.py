"""The random stream a method draws from, apart from the site's mini-batch sampling stream."""

from __future__ import annotations

import torch

from simulator.method import StageContext
from simulator.seeding import derive_seed, torch_generator


def method_generator(ctx: StageContext) -> torch.Generator:
    """The method's own generator for a visit: seeded by hashing the visit's sampling seed.

    ``ctx.generator`` draws the site's mini-batches; a method that drew its splits,
    augmentations or buffer indices from it too would shift every later batch, so two
    methods run on the same (seed, order) would see different data. The method stream is
    ``derive_seed(ctx.generator.initial_seed(), "method")``: the same for every method, so
    ``smg`` and ``smd_replay_matched`` also draw the same splits and style views.
    """
    return torch_generator(derive_seed(ctx.generator.initial_seed(), "method"))
