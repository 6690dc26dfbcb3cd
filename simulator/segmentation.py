"""The segmentation network and its loss, shared by sites and the learner.

A small 2-D U-Net (Ronneberger et al., 2015) with GroupNorm (batch-size
independent, and free of running statistics, so that weights alone define the
model and functional meta-steps need no buffers) and configurable width and depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simulator.seeding import torch_generator


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """2-D U-Net returning one foreground logit per pixel."""

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet depth must be >= 1, got {depth}")
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.enc = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.enc.append(_block(cin, c))
            cin = c
        self.mid = _block(chans[-2], chans[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.dec.append(_block(2 * chans[i], chans[i]))
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.mid(x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def build_model(in_channels: int, width: int, depth: int, seed: int) -> UNet:
    """A U-Net whose initial weights depend only on ``seed``."""
    gen = torch_generator(seed)
    model = UNet(in_channels, width, depth)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                bound = (6.0 / fan_in) ** 0.5 / 2**0.5  # He-uniform for SiLU-ish nets
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=gen))
            elif p.ndim == 1 and p.shape[0] > 0:
                # GroupNorm weights start at one, every bias at zero
                p.fill_(0.0)
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
    return model


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(1)
    denom = prob.sum(1) + tgt.sum(1)
    return (1.0 - (2 * inter + eps) / (denom + eps)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The segmentation loss every method trains on: 0.5 BCE + 0.5 soft Dice."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return 0.5 * bce + 0.5 * soft_dice_loss(logits, target)


def seg_loss_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The segmentation loss of each image alone (0.5 BCE + 0.5 soft Dice), shape ``(N,)``."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    dice = 1.0 - (2 * (prob * tgt).sum(1) + 1.0) / (prob.sum(1) + tgt.sum(1) + 1.0)
    return 0.5 * bce + 0.5 * dice


def seg_loss_weighted(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum_i weights_i * loss_i, loss_i the segmentation loss of image i alone (0.5 BCE + 0.5 soft
    Dice).

    With equal weights 1/N it is :func:`seg_loss` of the batch (up to rounding).
    """
    return (seg_loss_per_image(logits, target) * weights).sum()


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard foreground Dice per image; an empty prediction on an empty mask counts 1."""
    p = pred.flatten(1).bool()
    t = target.flatten(1).bool()
    inter = (p & t).sum(1).float()
    total = p.sum(1).float() + t.sum(1).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return dice


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Binary masks (threshold 0.5 on the sigmoid) for a stack of images."""
    model.eval()
    outs = [model(images[i : i + batch_size]) > 0 for i in range(0, len(images), batch_size)]
    return torch.cat(outs).float()
