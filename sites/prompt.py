"""Prompt tuning inside a site: only the prompt is optimised; the backbone is frozen.

The site inverts its own (image, mask) pairs into the token space of the public SMD
backbone, minimising their denoising loss with respect to the prompt alone:

1. search: the public token prior (the backbone's appearance MLP) is evaluated at
   ``candidates`` random appearance vectors on a fixed set of noises and timesteps;
   the best one starts the inversion;
2. coarse: Adam on the appearance vector (a low-dimensional, well-conditioned path
   through the prior) for half of the steps;
3. fine: Adam on the free K x D tokens for the other half.

The K x D tokens are the only generative artefact the site exports.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from simulator.optim import Adam
from simulator.seeding import torch_generator
from simulator.smd.backbone import SMDBackbone, to_model_space


def _fixed_loss(backbone: SMDBackbone, x: torch.Tensor, tokens: torch.Tensor, seed: int = 0) -> float:
    """Denoising loss on a fixed draw of noises and timesteps (comparable across prompts)."""
    with torch.no_grad():
        return float(backbone.denoise_loss(x, tokens, torch_generator(seed)))


def tune_prompt(backbone: SMDBackbone, images: np.ndarray, masks: np.ndarray, steps: int, lr: float,
                batch: int, gen: torch.Generator, candidates: int = 32) -> tuple[np.ndarray, dict[str, float]]:
    """Return the tuned prompt (K, D) float32 and scalar logs."""
    t0 = time.perf_counter()
    device = next(backbone.parameters()).device
    backbone.requires_grad_(False)
    backbone.eval()
    x = to_model_space(images, masks, backbone.spec.image_size).to(device)
    probe = x[: min(len(x), 32)]
    init_loss = _fixed_loss(backbone, probe, backbone.prompt_init[None])
    # 1. search over the public prior
    cond_dim = backbone.spec.cond_dim
    cands = torch.randn((candidates, cond_dim), generator=gen).to(device) * 0.8
    cands[0] = 0.0
    scores = [_fixed_loss(backbone, probe, backbone.tokens_from_condition(c[None])) for c in cands]
    cond = cands[int(np.argmin(scores))].clone().requires_grad_(True)
    # 2. coarse: the appearance vector
    opt = Adam([cond], lr=0.05)
    coarse = steps // 2
    for _ in range(coarse):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(device)
        loss = backbone.denoise_loss(x[idx], backbone.tokens_from_condition(cond[None]), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # 3. fine: free tokens
    prompt = backbone.tokens_from_condition(cond[None])[0].detach().clone().requires_grad_(True)
    opt = Adam([prompt], lr=lr)
    for _ in range(steps - coarse):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(device)
        loss = backbone.denoise_loss(x[idx], prompt[None], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final_loss = _fixed_loss(backbone, probe, prompt[None].detach())
    logs = {"prompt_steps": steps, "prompt_seconds": time.perf_counter() - t0,
            "prompt_loss_init": init_loss, "prompt_loss_search": float(min(scores)),
            "prompt_loss_final": final_loss}
    return prompt.detach().cpu().numpy().astype(np.float32), logs
