"""Prompt tuning inside a site: only the K x D prompt is optimised; the backbone is frozen.

The site inverts its own data into the token space of the public SMD backbone by
minimising the denoising loss of its (image, mask) pairs with respect to the
prompt alone. The prompt is the only generative artefact the site exports.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from simulator.smd.backbone import SMDBackbone, to_model_space


def tune_prompt(backbone: SMDBackbone, images: np.ndarray, masks: np.ndarray, steps: int, lr: float,
                batch: int, gen: torch.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Return the tuned prompt (K, D) float32 and scalar logs."""
    t0 = time.perf_counter()
    device = next(backbone.parameters()).device
    backbone.requires_grad_(False)
    backbone.eval()
    x = to_model_space(images, masks, backbone.spec.image_size).to(device)
    prompt = backbone.prompt_init.detach().clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([prompt], lr=lr)
    first, losses = None, []
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen).to(device)
        loss = backbone.denoise_loss(x[idx], prompt[None], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        first = first if first is not None else losses[0]
    with torch.no_grad():  # the same fixed evaluation of the loss at the start and end prompt
        g0, g1 = (torch.Generator().manual_seed(0) for _ in range(2))
        n = min(len(x), 64)
        init_loss = float(backbone.denoise_loss(x[:n], backbone.prompt_init[None].to(device), g0))
        final_loss = float(backbone.denoise_loss(x[:n], prompt[None], g1))
    logs = {"prompt_steps": steps, "prompt_seconds": time.perf_counter() - t0,
            "prompt_loss_init": init_loss, "prompt_loss_final": final_loss}
    return prompt.detach().cpu().numpy().astype(np.float32), logs
