"""Prompt tuning inside a site: only the prompt is optimised; the backbone is frozen.

The site inverts its own (image, mask) pairs into the token space of the public SMD
backbone, minimising their denoising loss with respect to the prompt alone:

1. search: the public token prior (the backbone's appearance MLP) is evaluated at
   ``candidates`` random appearance vectors on a fixed set of noises and timesteps;
   the best one starts the inversion;
2. coarse: Adam on the appearance vector (a low-dimensional, well-conditioned path
   through the prior) for half of the steps;
3. fine: Adam on the free K x D tokens for the other half.

Without differential privacy each phase may stop early: every few steps the loss on the
fixed probe is measured, and a phase whose last steps improved it by less than a set
fraction ends there with the best prompt seen (the probe loss is a site-internal figure;
under DP tuning runs the steps its privacy budget was set for, see :mod:`sites.dp_prompt`).

The K x D tokens are the only generative artefact the site exports.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from simulator.devices import to_device, to_host
from simulator.optim import Adam
from simulator.seeding import torch_generator
from simulator.smd.backbone import SMDBackbone, to_model_space


def _fixed_loss(
    backbone: SMDBackbone, x: torch.Tensor, tokens: torch.Tensor, seed: int = 0
) -> float:
    """Denoising loss on a fixed draw of noises and timesteps (comparable across prompts)."""
    with torch.no_grad():
        return float(to_host(backbone.denoise_loss(x, tokens, torch_generator(seed))))


class _EarlyStop:
    """Ends a tuning phase when ``every`` steps improved the probe loss by less than ``tol``
    (relative), keeping the best parameters seen; ``tol`` 0: the phase runs all its steps."""

    def __init__(
        self, loss_of, start: torch.Tensor, start_loss: float, tol: float, every: int
    ) -> None:
        self.loss_of, self.tol, self.every = loss_of, tol, max(1, every)
        self.best, self.best_loss, self.checks = start.detach().clone(), start_loss, 0

    def done(self, param: torch.Tensor, step: int) -> bool:
        """After ``step`` (1-based) steps of the phase: check on every ``every``-th step."""
        if self.tol <= 0 or step % self.every:
            return False
        loss = self.loss_of(param.detach())
        self.checks += 1
        improved = loss < self.best_loss * (1.0 - self.tol)
        if loss < self.best_loss:
            self.best, self.best_loss = param.detach().clone(), loss
        return not improved

    def finish(self, param: torch.Tensor, step: int) -> torch.Tensor:
        """The phase's result after ``step`` steps: the best parameters seen, the last ones
        compared too when the last step was not a check (``tol`` 0: the last parameters)."""
        if self.tol <= 0:
            return param
        if step % self.every:
            loss = self.loss_of(param.detach())
            self.checks += 1
            if loss < self.best_loss:
                self.best, self.best_loss = param.detach().clone(), loss
        return self.best


def tune_prompt(
    backbone: SMDBackbone,
    images: np.ndarray,
    masks: np.ndarray,
    steps: int,
    lr: float,
    batch: int,
    gen: torch.Generator,
    candidates: int = 32,
    stop_tol: float = 0.0,
    check_every: int = 3,
) -> tuple[np.ndarray, dict[str, float]]:
    """Return the tuned prompt (K, D) float32 and scalar logs.

    With ``stop_tol`` > 0 each phase checks the loss on the fixed probe every ``check_every`` steps
    and stops when it improved by less than ``stop_tol`` (relative), keeping the best prompt seen;
    ``prompt_steps`` logs the steps taken, ``prompt_steps_planned`` the steps asked for.
    """
    t0 = time.perf_counter()
    device = next(backbone.parameters()).device
    backbone.requires_grad_(False)
    backbone.eval()
    (x,) = to_device(device, to_model_space(images, masks, backbone.spec.image_size))
    probe = x[: min(len(x), 32)]
    init_loss = _fixed_loss(backbone, probe, backbone.prompt_init[None])
    # 1. search over the public prior
    cond_dim = backbone.spec.cond_dim
    cands = torch.randn((candidates, cond_dim), generator=gen).to(device) * 0.8
    cands[0] = 0.0
    scores = [_fixed_loss(backbone, probe, backbone.tokens_from_condition(c[None])) for c in cands]
    best = int(np.argmin(scores))
    cond = cands[best].clone().requires_grad_(True)
    taken = 0
    # 2. coarse: the appearance vector
    stop = _EarlyStop(
        lambda c: _fixed_loss(backbone, probe, backbone.tokens_from_condition(c[None])),
        cond,
        scores[best],
        stop_tol,
        check_every,
    )
    opt = Adam([cond], lr=0.05)
    coarse = steps // 2
    for k in range(coarse):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(device)
        loss = backbone.denoise_loss(x[idx], backbone.tokens_from_condition(cond[None]), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        taken += 1
        if stop.done(cond, k + 1):
            break
    cond = stop.finish(cond, taken)
    checks = stop.checks
    # 3. fine: free tokens
    with torch.no_grad():
        prompt = backbone.tokens_from_condition(cond.detach()[None])[0].clone()
    stop = _EarlyStop(
        lambda p: _fixed_loss(backbone, probe, p[None]),
        prompt,
        stop.best_loss,
        stop_tol,
        check_every,
    )
    prompt.requires_grad_(True)
    opt = Adam([prompt], lr=lr)
    fine = 0
    for k in range(steps - coarse):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(device)
        loss = backbone.denoise_loss(x[idx], prompt[None], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        taken += 1
        fine += 1
        if stop.done(prompt, k + 1):
            break
    prompt = stop.finish(prompt, fine)
    checks += stop.checks
    final_loss = (
        stop.best_loss if stop_tol > 0 else _fixed_loss(backbone, probe, prompt[None].detach())
    )
    logs = {
        "prompt_steps": taken,
        "prompt_steps_planned": steps,
        "prompt_seconds": time.perf_counter() - t0,
        "prompt_loss_init": init_loss,
        "prompt_loss_search": float(min(scores)),
        "prompt_loss_final": final_loss,
        "prompt_checks": checks,
    }
    return to_host(prompt).astype(np.float32), logs
