"""Adam, step for step the algorithm of ``torch.optim.Adam`` on one device, without its import cost.

``torch.optim.Optimizer`` imports ``torch._dynamo`` (and sympy) the first time an optimiser is
built: about 68 MB of memory and a second of start-up in every process that trains, measured in
a site actor (issue "runs that survive": a site actor's PSS budget is 250 MB). Site actors and the
learner only need plain Adam, so this module implements it with the same tensor operations in
the same order as torch's single-tensor path (the one torch uses on CPU), which makes its updates
bit-identical to ``torch.optim.Adam(params, lr, weight_decay=...)`` there
(``tests/test_optim.py`` checks it). Only the options the project uses exist: L2 weight decay,
no amsgrad, no maximize, no capturable or fused variants.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam (Kingma and Ba, 2015) with torch's bias correction and L2 weight decay.

    ``step()`` updates every parameter that has a gradient; ``zero_grad()`` clears them.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("Adam got an empty parameter list")
        if not lr > 0.0 or not eps > 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"Adam: lr {lr} and eps {eps} must be > 0 and weight_decay {weight_decay} >= 0"
            )
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam: betas {betas} must lie in [0, 1)")
        self.lr, self.betas, self.eps, self.weight_decay = (
            float(lr),
            betas,
            float(eps),
            float(weight_decay),
        )
        # per parameter: step count, first and second moment (created at its first gradient)
        self.state: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter with a gradient."""
        beta1, beta2 = self.betas
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if i not in self.state:
                self.state[i] = (
                    [0],
                    torch.zeros_like(param, memory_format=torch.preserve_format),
                    torch.zeros_like(param, memory_format=torch.preserve_format),
                )
            count, exp_avg, exp_avg_sq = self.state[i]
            count[0] += 1
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(
                count[0]
            )  # torch keeps it in a float32 tensor: exact for any count used here
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    @torch.no_grad()
    def preview(self, grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The step Adam would take now for ``grads`` (one per parameter), state left unchanged.

        Returns, per parameter, the parameter change ``step()`` would subtract (weight decay
        included) and the denominator it would divide by (sqrt of the bias-corrected second
        moment, plus eps): the preconditioner of that step is its inverse.
        """
        beta1, beta2 = self.betas
        updates, denoms = [], []
        for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            if i in self.state:
                count, exp_avg, exp_avg_sq = self.state[i]
                n = count[0] + 1
            else:
                exp_avg, exp_avg_sq, n = torch.zeros_like(param), torch.zeros_like(param), 1
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            m = exp_avg.lerp(grad, 1 - beta1)
            v = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / (1 - beta2**n) ** 0.5).add_(self.eps)
            updates.append(m.div(denom).mul_(self.lr / (1 - beta1**n)))
            denoms.append(denom)
        return updates, denoms

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (drop it, or zero it in place)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()
