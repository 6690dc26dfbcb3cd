"""The one-run empirical audit of a site's DP training (``smg-sim dp-audit``).

The site's operator checks its own mechanism: ``m`` canary cases (noise images, each with a mask
of random blocks that no other case predicts) are each added to a phantom site's private train
set with probability 1/2, drawn by the auditor; the visit's DP training runs on that set exactly
as a site runs it (:class:`simulator.visit.LocalVisit` under :func:`sites.dp_train.
plan_dp_training`, ``finetune``'s DP step); then only the weights the visit exports are scored:
each canary's loss under the weights sent minus under the weights returned (a member's drops
more). The auditor guesses "in" for the ``k_in`` highest scores and "out" for the ``k_out``
lowest, fixed in advance, and :func:`simulator.dp_audit.epsilon_lower_bound` turns the right
guesses into a lower bound on epsilon at 95 % confidence, printed beside the accountant's claim.

``broken=True`` runs the same training with the mechanism switched off (no clipping, no noise),
a test-only control whose bound should pass the claim. Everything happens inside this one
process: no real image crosses a boundary (the operator audits its own site).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from simulator.config import build_config


def _canaries(m: int, size: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = gen.random((m, 1, size, size), dtype=np.float32)
    blocks = (gen.random((m, 1, 4, 4)) < 0.5).astype(np.uint8)
    y = blocks.repeat(size // 4, axis=2).repeat(size // 4, axis=3)
    return x, y


def one_run_audit(
    epsilon: float,
    canaries: int = 1000,
    k_in: int = 200,
    k_out: int = 200,
    steps: int = 300,
    batch: int = 64,
    seed: int = 0,
    broken: bool = False,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Train one DP visit on a phantom site with canaries; return the claim and the bound."""
    from server.methods import build_method
    from simulator.dp_audit import Guesses, epsilon_lower_bound
    from simulator.driver.plan import method_hparams, site_specs
    from simulator.method import StageContext
    from simulator.segmentation import build_model, seg_loss_per_image
    from simulator.visit import LocalVisit
    from sites.datasets import build_site_data
    from sites.dp_train import plan_dp_training
    from sites.settings import SiteSettings

    torch.manual_seed(seed)  # nothing below draws from it; the generators are explicit
    cfg = build_config("smoke")
    spec = dataclasses.replace(site_specs(cfg, ["alpha"])["alpha"], data_dir="")
    data = build_site_data(spec)
    size = data.train_x.shape[-1]
    rng = np.random.default_rng(seed)
    cx, cy = _canaries(canaries, size, rng)
    included = rng.random(canaries) < 0.5
    x = np.concatenate([data.train_x, cx[included]])
    y = np.concatenate([data.train_y, cy[included]]).astype(np.float32)
    own = SiteSettings(
        name="alpha", spec=spec, dp_epsilon=epsilon, dp_train_share=1.0, device="cpu"
    )
    case_ids = np.arange(len(x))
    gen = torch.Generator().manual_seed(seed + 1)
    dp = plan_dp_training(own, case_ids, steps, batch, 1, gen)
    claim = dp.logs()
    if broken:  # the control: no clipping, no noise
        dp.private.clip, dp.private.sigma = 1e12, 0.0
    model = build_model(1, cfg.model.width, cfg.model.depth, seed=seed)
    sent = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method = build_method("finetune", model, method_hparams(cfg, "finetune"))
    ctx = StageContext("alpha", 1, steps, torch.device("cpu"), torch.Generator(), [])
    method.begin_stage(ctx)
    train = (torch.from_numpy(x), torch.from_numpy(y))
    visit = LocalVisit(model, method, ctx, train, {}, batch, dp=dp)
    visit.run(steps)

    def losses(state: dict[str, torch.Tensor]) -> np.ndarray:
        scorer = build_model(1, cfg.model.width, cfg.model.depth, seed=seed)
        scorer.load_state_dict(state)
        with torch.no_grad():
            out = seg_loss_per_image(scorer(torch.from_numpy(cx)), torch.from_numpy(cy).float())
        return out.numpy()

    scores = losses(sent) - losses(model.state_dict())
    r, v = Guesses(k_in, k_out).score(scores, included)
    bound = epsilon_lower_bound(canaries, r, v, dp.delta, confidence)
    return {
        "claimed_epsilon": claim["dp_train_epsilon"],
        "delta": dp.delta,
        "mechanism": "off (control: no clipping, no noise)" if broken else "DP-SGD",
        "noise_multiplier": 0.0 if broken else dp.sigma,
        "canaries": canaries,
        "canaries_included": int(included.sum()),
        "site_cases": int(len(data.train_x)),
        "cases": int(len(x)),
        "sample_rate": dp.sample_rate,
        "steps": steps,
        "samples_per_case": steps * dp.sample_rate,
        "guesses": r,
        "right": v,
        "confidence": confidence,
        "epsilon_lower_bound": bound,
    }
