"""The inner step of the meta-gradient methods: d = s P g for a leading gradient g.

:class:`AdamStep` (the methods' rule): P is Adam's preconditioner for g and rms(d) is lookahead
times the parameter change Adam would make for g now, so one unit of lookahead is one outer step
(the derivation is in :mod:`server.methods.meta_gradient`). :class:`FixedStep`: a fixed RMS
length along g itself (the identity metric), for tests, diagnostics and lookahead 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simulator.optim import Adam

Grads = list[torch.Tensor]


def rms(grads: Grads) -> float:
    """Root mean square of a gradient over all its parameters (a detached scalar)."""
    n = sum(g.numel() for g in grads)
    return float(torch.nn.utils.get_total_norm([g.detach() for g in grads])) / n**0.5


def inner_scale(grads: Grads, step: float) -> float:
    """The scalar s with d = s * g of RMS ``step``; 0 for a zero gradient."""
    r = rms(grads)
    return step / r if r > 0 else 0.0


@dataclass(frozen=True)
class Inner:
    """One inner displacement d = scale * P g of a leading gradient g, of RMS ``length``.

    ``precond`` is P elementwise (None: the identity); P and ``scale`` are detached constants.
    """

    scale: float
    length: float
    precond: Grads | None = None

    def direction(self, lead: Grads) -> Grads:
        """P g (g itself without a preconditioner); keeps ``lead``'s graph when it has one."""
        if self.precond is None:
            return lead
        return [g * p for g, p in zip(lead, self.precond, strict=True)]


class FixedStep:
    """d = length * g / rms(g): a fixed-length gradient step (the identity metric).

    For tests, diagnostics and lookahead 0 (``FixedStep(0.0)``: no inner step)."""

    def __init__(self, length: float) -> None:
        self.length = float(length)

    @property
    def off(self) -> bool:
        return self.length == 0.0

    def __call__(self, lead: Grads) -> Inner:
        scale = inner_scale(lead, self.length)
        return Inner(scale, self.length if scale > 0 else 0.0)


class AdamStep:
    """d = lookahead times the optimiser's own step for the leading gradient, along P g.

    P = 1 / (sqrt(v') + eps), the preconditioner Adam would apply if g were this step's gradient
    (``Adam.preview``: its second moment updated with g, bias-corrected, not stored), and
    rms(d) = lookahead * rms(the parameter change Adam would make for g): one lookahead unit is
    one outer step at the optimiser's current moments, early or late in training.
    """

    def __init__(self, opt: Adam, lookahead: float) -> None:
        self.opt, self.lookahead = opt, float(lookahead)

    @property
    def off(self) -> bool:
        return self.lookahead == 0.0

    def __call__(self, lead: Grads) -> Inner:
        detached = [g.detach() for g in lead]
        if len(detached) != len(self.opt.params):
            raise ValueError(
                f"AdamStep: {len(detached)} gradients for an optimiser of "
                f"{len(self.opt.params)} parameters"
            )
        update, denom = self.opt.preview(detached)
        length = self.lookahead * rms(update)
        precond = [1.0 / d for d in denom]
        scale = inner_scale([g * p for g, p in zip(detached, precond, strict=True)], length)
        return Inner(scale, length if scale > 0 else 0.0, precond)


InnerStep = FixedStep | AdamStep


def as_inner(step: InnerStep | float) -> InnerStep:
    """An inner-step rule; a number is a fixed length (``FixedStep``)."""
    return FixedStep(step) if isinstance(step, int | float) else step
