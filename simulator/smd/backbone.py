"""The SMD backbone: a prompt-conditioned diffusion U-Net generating image and mask together.

``diffusers.UNet2DConditionModel`` with ``channels + 1`` input/output channels
(image channels and one mask channel, all scaled to [-1, 1]), cross-attention over
K prompt tokens of width D at the lowest resolution only (attention dominates CPU
cost). Training uses a ``DDPMScheduler``; sampling uses a ``DDIMScheduler`` with few
steps and an explicit ``torch.Generator``. A small MLP maps an appearance vector to
K x D tokens for pre-training on public data; a site prompt is a free K x D tensor
found by inversion (prompt tuning) with the backbone frozen.

``diffusers`` is imported when a backbone is built, not when this module is: importing it
costs seconds of CPU per process (it loads ``torch._dynamo`` and ``scipy.stats``), and most
processes that read a spec or a cached digest (the driver, a ``finetune`` learner, a site that
only checks its cache) never build one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simulator.devices import to_device, to_host


@dataclass(frozen=True)
class SMDSpec:
    """Everything that defines a backbone (its cache key is a hash of this)."""

    benchmark: str
    channels: int
    data_size: int
    image_size: int
    widths: tuple[int, ...]
    tokens: int
    token_dim: int
    cond_dim: int
    train_timesteps: int
    prediction: str
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    public_pool: int
    public_seed: int

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SMDSpec:
        return cls(**{**data, "widths": tuple(data["widths"])})


def preload() -> float:
    """Import the libraries a backbone needs (diffusers: seconds of CPU per process) ahead of
    the first backbone, so a process can do it while it would otherwise wait; returns the
    seconds."""
    import time

    t0 = time.perf_counter()
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: F401

    return time.perf_counter() - t0


class SMDBackbone(nn.Module):
    """U-Net denoiser plus the appearance-to-tokens MLP used in pre-training."""

    def __init__(self, spec: SMDSpec) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        super().__init__()
        self.spec = spec
        n = len(spec.widths)
        ch = spec.channels + 1
        self.unet = UNet2DConditionModel(
            sample_size=spec.image_size,
            in_channels=ch,
            out_channels=ch,
            block_out_channels=tuple(spec.widths),
            down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
            layers_per_block=1,
            cross_attention_dim=spec.token_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        self.cond_mlp = nn.Sequential(
            nn.Linear(spec.cond_dim, 128), nn.SiLU(), nn.Linear(128, spec.tokens * spec.token_dim)
        )
        self.noise = DDPMScheduler(
            num_train_timesteps=spec.train_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=spec.prediction,
        )
        # the prompt that tuning starts from: the tokens of the mean public appearance
        self.register_buffer("prompt_init", torch.zeros(spec.tokens, spec.token_dim))

    def tokens_from_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return self.cond_mlp(cond).view(-1, self.spec.tokens, self.spec.token_dim)

    def denoise_loss(
        self,
        x0: torch.Tensor,
        tokens: torch.Tensor,
        gen: torch.Generator | None = None,
        reduce: bool = True,
    ) -> torch.Tensor:
        """MSE of the predicted target (noise, clean sample or v) at random timesteps.

        Per sample if ``reduce`` is False.
        """
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen, device="cpu").to(x0.device)
        t = torch.randint(0, self.spec.train_timesteps, (b,), generator=gen, device="cpu").to(
            x0.device
        )
        xt = self.noise.add_noise(x0, noise, t)
        if tokens.shape[0] != b:
            tokens = tokens.expand(b, -1, -1)
        pred = self.unet(xt, t, encoder_hidden_states=tokens).sample
        if self.spec.prediction == "epsilon":
            target = noise
        elif self.spec.prediction == "sample":
            target = x0
        else:
            target = self.noise.get_velocity(x0, noise, t)
        err = (pred - target).pow(2).flatten(1).mean(1)
        return err.mean() if reduce else err

    @torch.no_grad()
    def sample(
        self, tokens: torch.Tensor, n: int, steps: int, gen: torch.Generator, batch: int = 64
    ) -> torch.Tensor:
        """``n`` samples (N, C+1, s, s) in [-1, 1] from one K x D prompt with DDIM (eta = 0)."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.noise.config)
        sched.set_timesteps(steps)
        device = next(self.parameters()).device
        ch = self.spec.channels + 1
        s = self.spec.image_size
        outs = []
        self.eval()
        for start in range(0, n, batch):
            m = min(batch, n - start)
            x = torch.randn((m, ch, s, s), generator=gen, device="cpu").to(device)
            (tok,) = to_device(device, tokens.reshape(1, self.spec.tokens, self.spec.token_dim))
            tok = tok.expand(m, -1, -1)
            for t in sched.timesteps:
                eps = self.unet(x, t.to(device), encoder_hidden_states=tok).sample
                x = sched.step(eps, t, x).prev_sample
            outs.append(torch.from_numpy(to_host(x.clamp(-1, 1))))
        return torch.cat(outs)


def to_model_space(images: np.ndarray, masks: np.ndarray, size: int) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) and masks {0, 1} -> (N, C+1, size, size) in [-1, 1]."""
    x = torch.from_numpy(np.concatenate([images, masks.astype(np.float32)], axis=1)).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x * 2 - 1


def from_model_space(x: torch.Tensor, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples in [-1, 1] -> images in [0, 1] float32 and masks {0, 1} uint8 at ``size``."""
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    img = ((x[:, :channels] + 1) / 2).clamp(0, 1).numpy().astype(np.float32)
    mask = (x[:, channels:] > 0).numpy().astype(np.uint8)
    return img, mask
