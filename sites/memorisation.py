"""How much the replay of a site's prompt memorises that site's images, measured inside it.

* Nearest-neighbour distance from each synthetic image to the real train images (RMS
  pixel distance at the data size): its distribution and the fraction under a
  threshold (the distance below which two real images of the same site never fall
  is reported beside it for scale).
* The nearest-neighbour ratio test: d1 / d2 < 1/3 flags a synthetic image that is
  much closer to one real image than to any other (a copy, in the sense of the
  SIFT ratio test).
* Membership inference: the denoising loss under the site prompt of train images
  (members) against held-out test images (non-members); the AUC of "lower loss =
  member", with a bootstrap 95% interval. 0.5 means no measurable membership signal.

Only these statistics leave the site.
"""

from __future__ import annotations

import numpy as np
import torch

from simulator.devices import device_of, to_device, to_host
from simulator.seeding import numpy_rng, torch_generator
from simulator.smd.backbone import SMDBackbone, to_model_space


def _pairwise_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    d2 = (a2**2).sum(1)[:, None] + (b2**2).sum(1)[None] - 2 * a2 @ b2.T
    return np.sqrt(np.maximum(d2, 0) / a2.shape[1])


def nearest_neighbours(synth: np.ndarray, real: np.ndarray, threshold: float) -> dict[str, float]:
    """Distance statistics of synthetic images to their nearest real train images."""
    d = _pairwise_rms(synth, real)
    d.sort(axis=1)
    d1 = d[:, 0]
    d2 = d[:, 1] if d.shape[1] > 1 else np.full_like(d1, np.inf)
    rr = _pairwise_rms(real, real)
    np.fill_diagonal(rr, np.inf)
    return {
        "nn_distance_min": float(d1.min()),
        "nn_distance_p05": float(np.quantile(d1, 0.05)),
        "nn_distance_median": float(np.median(d1)),
        "nn_threshold": threshold,
        "nn_fraction_under_threshold": float((d1 < threshold).mean()),
        "nn_ratio_flagged_fraction": float((d1 / d2 < 1 / 3).mean()),
        "real_nn_distance_min": float(rr.min()),
        "real_nn_distance_median": float(np.median(rr.min(1))),
    }


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score), ties counted half (the Mann-Whitney AUC)."""
    m = member_scores[:, None]
    n = nonmember_scores[None, :]
    return float(((m > n).sum() + 0.5 * (m == n).sum()) / (m.size * n.size))


def membership_inference(
    backbone: SMDBackbone,
    prompt: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    seed: int,
    repeats: int = 2,
    n_boot: int = 500,
) -> dict[str, float]:
    """AUC of the denoising-loss attack (lower loss = member) with a bootstrap 95% interval."""
    size = backbone.spec.image_size
    dev = device_of(backbone)
    (tok,) = to_device(dev, prompt[None])

    def losses(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (z,) = to_device(dev, to_model_space(x, y, size))
        gen = torch_generator(seed)  # the same noises for members and non-members
        with torch.no_grad():
            per = [
                to_host(backbone.denoise_loss(z, tok, gen, reduce=False)) for _ in range(repeats)
            ]
        return np.mean(per, axis=0)

    n = min(len(train[0]), len(held_out[0]))
    lm = losses(train[0][:n], train[1][:n])
    ln = losses(held_out[0][:n], held_out[1][:n])
    value = auc(-lm, -ln)
    rng = numpy_rng(seed)
    boots = [auc(-lm[rng.integers(0, n, n)], -ln[rng.integers(0, n, n)]) for _ in range(n_boot)]
    return {
        "mia_auc": value,
        "mia_auc_low": float(np.quantile(boots, 0.025)),
        "mia_auc_high": float(np.quantile(boots, 0.975)),
        "mia_members": n,
        "mia_nonmembers": n,
    }
