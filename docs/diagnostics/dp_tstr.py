"""Replay fidelity (TSTR) of the six phantom sites' prompts against the DP budget epsilon.

The quick profile's cached SMD backbone (pre-trained first if the cache lacks it); for each site
and each epsilon (``none`` is the non-private tuner; ``public`` is no tuning at all, the prompt
DP tuning starts from) the site's prompt is tuned, its replay
sampled and a segmenter trained on the replay alone is tested on the site's real test split
(TSTR ratio: that Dice over the Dice of one trained on the real train split), exactly as a run
does it inside the site. ``--norms`` first prints the spread of per-case prompt-gradient norms,
the scale ``privacy.dp_clip`` is chosen against. Writes one JSON file. Usage::

    .venv/bin/python docs/diagnostics/dp_tstr.py --eps none,16,4,1,public --out
    docs/diagnostics/dp_tstr.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import build_config, parse_set
from simulator.driver.plan import site_spec
from simulator.seeding import derive_seed, torch_generator
from simulator.smd.backbone import from_model_space, to_model_space
from simulator.smd.cache import load_backbone
from simulator.smd.pretrain import ensure_backbone, smd_spec
from sites.datasets import build_site_data
from sites.dp_prompt import dp_tune_prompt, per_sample_grads
from sites.fidelity import tstr
from sites.prompt import tune_prompt


def grad_norms(model, x: torch.Tensor) -> dict[str, list[float]]:
    """Quantiles (5, 50, 95 %) of per-case gradient norms at the public start, coarse and fine."""
    gen = torch_generator(0)
    cond = torch.zeros(model.spec.cond_dim)
    coarse = (
        per_sample_grads(cond, model.tokens_from_condition, model, x[:32], gen)
        .flatten(1)
        .norm(dim=1)
    )
    tokens = model.tokens_from_condition(cond[None])[0].detach()
    fine = per_sample_grads(tokens, lambda p: p, model, x[:32], gen).flatten(1).norm(dim=1)
    q = torch.tensor([0.05, 0.5, 0.95])
    return {"coarse": torch.quantile(coarse, q).tolist(), "fine": torch.quantile(fine, q).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="none,16,4,1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--norms", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fine", type=float, default=None, help="share of DP steps on the free tokens")
    ap.add_argument(
        "--fine-clip", type=float, default=None, help="their clip norm over privacy.dp_clip"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = build_config("quick", parse_set(a.set))
    path, _ = ensure_backbone(smd_spec(cfg, 1))
    model = load_backbone(path)
    s, p = cfg.smd, cfg.privacy
    names = list(SITE_NAMES[:6])
    data = {
        n: build_site_data(dataclasses.replace(site_spec(cfg, n, i), data_dir=""))
        for i, n in enumerate(names)
    }
    out: dict = {
        "profile": "quick",
        "seed": a.seed,
        "prompt_steps": s.prompt_steps,
        "prompt_batch": s.prompt_batch,
        "dp_clip": p.dp_clip,
        "sites": names,
        "rows": [],
    }
    if a.norms:
        for n in names:
            d = data[n]
            out.setdefault("grad_norms", {})[n] = grad_norms(
                model, to_model_space(d.train_x, d.train_y, model.spec.image_size)
            )
            print(n, out["grad_norms"][n], flush=True)
    for eps in a.eps.split(","):
        for n in names:
            d = data[n]
            gen = torch_generator(derive_seed(a.seed, "prompt", n))
            t0 = time.perf_counter()
            if (
                eps == "public"
            ):  # no tuning: where DP tuning starts (the prior at the zero appearance vector)
                with torch.no_grad():
                    prompt = model.tokens_from_condition(torch.zeros(1, model.spec.cond_dim))[
                        0
                    ].numpy()
                logs = {}
            elif eps == "none":
                prompt, logs = tune_prompt(
                    model,
                    d.train_x,
                    d.train_y,
                    s.prompt_steps,
                    s.prompt_lr,
                    s.prompt_batch,
                    gen,
                    candidates=s.prompt_candidates,
                )
            else:
                prompt, logs = dp_tune_prompt(
                    model,
                    d.train_x,
                    d.train_y,
                    d.case_ids(),
                    s.prompt_steps,
                    s.prompt_lr,
                    s.prompt_batch,
                    gen,
                    float(eps),
                    p.dp_delta,
                    p.dp_clip,
                    **({"fine_fraction": a.fine} if a.fine is not None else {}),
                    **({"fine_clip_scale": a.fine_clip} if a.fine_clip is not None else {}),
                )
            tune_s = time.perf_counter() - t0
            x = model.sample(
                torch.from_numpy(prompt),
                s.replay_per_site,
                s.sample_steps,
                torch_generator(derive_seed(a.seed, "replay", n)),
            )
            synth = from_model_space(x, cfg.data.image_size, 1)
            r = tstr(
                (d.train_x, d.train_y),
                (d.test_x, d.test_y),
                synth,
                s.fidelity_steps,
                derive_seed(a.seed, "tstr", n),
            )
            row = {
                "epsilon": eps,
                "site": n,
                "tstr_ratio": r["tstr_ratio"],
                "tstr_dice_synthetic": r["tstr_dice_synthetic"],
                "tstr_dice_real": r["tstr_dice_real"],
                "tune_seconds": tune_s,
                **{k: v for k, v in logs.items() if k.startswith("dp_")},
            }
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        mean = np.mean([r["tstr_ratio"] for r in out["rows"] if r["epsilon"] == eps])
        print(f"epsilon {eps}: mean TSTR ratio {mean:.3f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
