"""PGA by its explicit alignment objective (double backpropagation): the reference for ``smg``."""

from __future__ import annotations

from server.methods.meta_gradient import alignment_gradient
from server.methods.smg import SMG


class PGAExact(SMG):
    """PGA by its explicit alignment objective, differentiated by double backpropagation.

    The reference for the first-order approximation in :class:`SMG` (beta = alpha).
    """

    name = "pga_exact"

    def _gradient(self, current, replay, groups):
        return alignment_gradient(self.model, current, replay, groups, self.hp["alpha"],
                                  self.hp["lambda_gen"], self.use_mem, self.use_gen)
