"""Differentially private prompt tuning inside a site (``privacy.dp_epsilon``).

DP-SGD on the prompt alone, with the case (patient) as the privacy unit:

* sampling: every step draws each case independently with probability ``q = batch / cases``
  (Poisson sampling, which the RDP accountant assumes) and one random slice of each drawn case,
  so a case adds at most one gradient to a step;
* per-case gradients: the parameter is replicated once per drawn slice and the per-slice losses
  are summed; the backbone is frozen and treats the samples of a batch independently (group
  norm, per-sample cross-attention), so the gradient of each replica is exactly that slice's
  gradient, in one backward pass;
* each per-case gradient is clipped to norm ``clip`` (on the appearance vector, the first half
  of the steps) or ``clip / 4`` (on the free tokens, the second half: their gradients are a
  quarter to a third as long; per-site medians 0.013-0.084 and 0.005-0.020 over the quick
  profile's phantom sites, from ``docs/diagnostics/dp_tstr.py --norms``); the sum gets Gaussian
  noise of standard deviation
  ``sigma`` times that clip and is divided by the expected batch ``q * cases``; Adam then steps
  (post-processing, which costs no privacy);
* ``sigma`` is calibrated in advance, by Opacus's RDP accountant, so that the fixed number of
  steps spends at most ``epsilon`` at ``delta`` (``1 / (10 cases)`` unless set); the spent
  (epsilon, delta) is computed by the same accountant afterwards.

Every step that reads private data is one of these steps. What the non-private tuner does with
private data beyond them is replaced: the candidate search is replaced by the zero appearance
vector (the centre the search draws its candidates around) instead of scoring candidates on the
site's images, the step count
is fixed (no early stop), and no loss on private data is computed or sent.

The sampling and the noise are drawn from the generator the site passes in: a keyed
pseudo-random function of the site's secret over the whole request
(:meth:`sites.site_state.SiteState.keyed_generator`), never from anything the request chooses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from simulator.devices import device_of, to_device, to_host
from simulator.dp import case_groups, noise_multiplier, poisson_cases, spent_epsilon
from simulator.optim import Adam
from simulator.smd.backbone import SMDBackbone, to_model_space


def per_sample_grads(
    param: torch.Tensor,
    to_tokens: Callable[[torch.Tensor], torch.Tensor],
    backbone: SMDBackbone,
    x: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """The gradient of each sample's denoising loss with respect to ``param``, (B, *param.shape)."""
    rep = param.detach().unsqueeze(0).expand(len(x), *param.shape).clone().requires_grad_(True)
    losses = backbone.denoise_loss(x, to_tokens(rep), gen, reduce=False)
    (grad,) = torch.autograd.grad(losses.sum(), rep)
    return grad


def _dp_step(
    param: torch.Tensor,
    opt: Adam,
    to_tokens: Callable,
    backbone: SMDBackbone,
    x: torch.Tensor,
    idx: list[int],
    clip: float,
    sigma: float,
    expected: float,
    gen: torch.Generator,
) -> None:
    """One DP-SGD step (nothing about the drawn gradients is returned: it would be unaccounted)."""
    total = torch.zeros(param.numel(), device=param.device)
    if idx:
        g = per_sample_grads(param, to_tokens, backbone, x[idx], gen).flatten(1)
        total = (g * (clip / (g.norm(dim=1) + 1e-12)).clamp(max=1.0)[:, None]).sum(0)
    noise = torch.randn(total.shape, generator=gen).to(param.device)  # drawn on the CPU stream
    noisy = total + sigma * clip * noise
    opt.zero_grad(set_to_none=True)
    param.grad = (noisy / expected).view_as(param).to(param.dtype)
    opt.step()


def dp_tune_prompt(
    backbone: SMDBackbone,
    images: np.ndarray,
    masks: np.ndarray,
    case_ids: np.ndarray,
    steps: int,
    lr: float,
    batch: int,
    gen: torch.Generator,
    epsilon: float,
    delta: float,
    clip: float,
    fine_fraction: float = 0.5,
    fine_clip_scale: float = 0.25,
) -> tuple[np.ndarray, dict[str, float]]:
    """The (epsilon, delta)-DP prompt (K, D) float32, and logs that hold no function of private data
    beyond the accounted steps (steps, seconds, the privacy parameters)."""
    if steps < 1:
        raise ValueError(
            "privacy.dp_epsilon needs smd.prompt_steps >= 1 (the accountant counts steps)"
        )
    t0 = time.perf_counter()
    backbone.requires_grad_(False)
    backbone.eval()
    dev = device_of(backbone)
    (x,) = to_device(dev, to_model_space(images, masks, backbone.spec.image_size))
    cases = case_groups(case_ids)
    n = len(cases)
    delta = delta if delta > 0 else 1.0 / (10 * n)
    q = min(1.0, batch / n)
    sigma = noise_multiplier(epsilon, delta, q, steps)
    expected = q * n
    # the public start: the appearance MLP at the prior's mean (no candidate scored on private data)
    cond = torch.zeros(backbone.spec.cond_dim, device=dev, requires_grad=True)
    opt = Adam([cond], lr=0.05)
    coarse = steps - int(round(steps * fine_fraction))
    for _ in range(coarse):
        _dp_step(
            cond,
            opt,
            backbone.tokens_from_condition,
            backbone,
            x,
            poisson_cases(cases, q, gen),
            clip,
            sigma,
            expected,
            gen,
        )
    with torch.no_grad():
        start = backbone.tokens_from_condition(cond.detach()[None])[0]
    prompt = start.clone().requires_grad_(True)
    opt = Adam([prompt], lr=lr)
    for _ in range(steps - coarse):
        _dp_step(
            prompt,
            opt,
            lambda p: p,
            backbone,
            x,
            poisson_cases(cases, q, gen),
            clip * fine_clip_scale,
            sigma,
            expected,
            gen,
        )
    eps = spent_epsilon(sigma, q, steps, delta)
    logs = {
        "prompt_steps": steps,
        "prompt_seconds": time.perf_counter() - t0,
        "dp_epsilon": eps,
        "dp_delta": delta,
        "dp_noise_multiplier": sigma,
        "dp_sample_rate": q,
        "dp_cases": n,
        "dp_clip": clip,
    }
    if not math.isfinite(eps):
        raise ValueError(
            f"DP prompt tuning: the accountant found no finite epsilon for sigma {sigma}"
        )
    return to_host(prompt).astype(np.float32), logs
