"""What limits a site's TSTR ratio: the SMD resolution, or the prompt and the backbone?

The TSTR ratio (``sites/fidelity.py``) trains a small segmenter on a site's replay and divides
its Dice on the real test split by that of the same segmenter trained on the real train split.
SMD models (image, mask) pairs at ``smd.image_size`` (32 px on the quick profile) and the replay
is upsampled to the data size (64 px), its mask thresholded. This script plays each site's part
in one process (it builds the site's data from a profile; only Dice values are printed) and
trains the same TSTR segmenter, for the same steps and seed, on three versions of the site's
own train split:

* ``real``: the pairs as they are (the ratio's denominator);
* ``real@smd``: the same pairs taken into the SMD's model space (area down to its resolution)
  and back out (bilinear up, mask thresholded at 0): a perfect SMD that reproduced every
  training pair could do no better than this; its ratio is the resolution's ceiling;
* with ``--run RUN_DIR``: the ``replay`` ratio of the run's ``smd.json``, and the contrast of
  the target in the real train split and in the run's replay (read from its checkpoint): mean
  intensity inside the mask minus outside, the share of replay pairs whose mask is empty, and how
  close the replay's masks come to the site's real ones (each mask's best Dice against any real
  train mask; the real test masks give the same figure for reference), and the precision and
  recall on the real test split of the TSTR segmenter trained on the replay and on the real pairs,
  and the target's median intensity beside the background's 99th percentile (how bright the
  brightest non-target structures are), in the real pairs and in the replay.

Usage::

    .venv/bin/python docs/diagnostics/tstr_ceiling.py [--profile quick] [--seeds 0,1,2] \
        [--run RUN_DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import build_config, parse_set
from simulator.driver.plan import site_spec
from simulator.seeding import derive_seed
from simulator.smd.backbone import from_model_space, to_model_space
from sites.datasets import build_site_data
from sites.fidelity import _train_and_test, train_segmenter


def ceiling(profile: str, seed: int, site: str, index: int) -> dict[str, float]:
    cfg = build_config(profile, parse_set([f"run.seed={seed}"]))
    d = build_site_data(site_spec(cfg, site, index))
    size, channels = d.train_x.shape[-1], d.train_x.shape[1]
    x, y = from_model_space(
        to_model_space(d.train_x, d.train_y, cfg.smd.image_size), size, channels
    )
    steps = cfg.smd.fidelity_steps
    tseed = derive_seed(seed, "tstr", site)  # the seed a run's fidelity check uses
    real = _train_and_test(d.train_x, d.train_y, d.test_x, d.test_y, steps=steps, seed=tseed)
    low = _train_and_test(x, y, d.test_x, d.test_y, steps=steps, seed=tseed)
    return {
        "dice_real": real,
        "dice_real_at_smd": low,
        "ceiling_ratio": low / real if real > 0 else float("nan"),
    }


def contrast(x: np.ndarray, y: np.ndarray) -> float:
    """Mean intensity inside the masks minus outside (all images and channels pooled)."""
    m = np.broadcast_to(y.astype(bool), x.shape)
    return float(x[m].mean() - x[~m].mean()) if m.any() and (~m).any() else float("nan")


def mask_match(masks: np.ndarray, reference: np.ndarray) -> float:
    """Mean over ``masks`` of the best Dice against any ``reference`` mask: how close the shapes
    (and places) of the masks are to the site's real ones."""
    a = masks.reshape(len(masks), -1).astype(np.float32)
    b = reference.reshape(len(reference), -1).astype(np.float32)
    inter = a @ b.T
    dice = 2 * inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None, :], 1.0)
    return float(dice.max(1).mean())


def errors_on_real(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, steps: int, seed: int
) -> dict[str, float]:
    """Precision and recall on the real test split of the TSTR segmenter trained on (x, y): low
    precision means it marks structures the training pairs never showed as background."""
    from simulator.segmentation import predict

    model = train_segmenter(x, y, steps, seed)
    pred = predict(model, torch.from_numpy(test_x).float()).numpy().astype(bool)
    truth = test_y.astype(bool)
    tp = float((pred & truth).sum())
    return {
        "precision": tp / max(float(pred.sum()), 1.0),
        "recall": tp / max(float(truth.sum()), 1.0),
    }


def replay_contrast(run: Path, profile: str, seed: int) -> dict[str, dict[str, float]]:
    """Per site: target contrast in the real train split and in the run's replay."""
    from resolution_gap import _checkpoint

    arrays = _checkpoint(run)
    cfg = build_config(profile, parse_set([f"run.seed={seed}"]))
    out = {}
    for i, site in enumerate(SITE_NAMES[:6]):
        if f"learner/bank/replay/{site}/x" not in arrays:
            continue
        d = build_site_data(site_spec(cfg, site, i))
        rx, ry = arrays[f"learner/bank/replay/{site}/x"], arrays[f"learner/bank/replay/{site}/y"]
        out[site] = {
            "contrast_real": contrast(d.train_x, d.train_y),
            "contrast_replay": contrast(rx, ry),
            "replay_empty_masks": float((ry.reshape(len(ry), -1).sum(1) == 0).mean()),
            "replay_mask_match": mask_match(ry, d.train_y),
            "real_mask_match": mask_match(d.test_y, d.train_y),
        }
        for name, (tx, ty) in (("real", (d.train_x, d.train_y)), ("replay", (rx, ry))):
            m = np.broadcast_to(ty.astype(bool), tx.shape)
            out[site][f"{name}_target_median"] = float(np.median(tx[m]))
            out[site][f"{name}_background_p99"] = float(np.percentile(tx[~m], 99))
        steps, tseed = cfg.smd.fidelity_steps, derive_seed(seed, "tstr", site)
        for name, (tx, ty) in (("replay", (rx, ry)), ("real", (d.train_x, d.train_y))):
            for k, v in errors_on_real(tx, ty, d.test_x, d.test_y, steps, tseed).items():
                out[site][f"{name}_trained_{k}"] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--run", type=Path, help="a run folder whose smd.json gives each site's replay TSTR ratio"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    replay, contrasts = {}, {}
    if args.run:
        replay = {
            s: v["tstr_ratio"]
            for s, v in json.loads((args.run / "smd.json").read_text())["sites"].items()
        }
        run_seed = json.loads((args.run / "config.json").read_text())["run"]["seed"]
        contrasts = replay_contrast(args.run, args.profile, run_seed)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for i, site in enumerate(SITE_NAMES[:6]):
            r = {"seed": seed, "site": site, **ceiling(args.profile, seed, site, i)}
            rows.append(r)
            print(
                f"seed {seed} {site:8s} real {r['dice_real']:.3f}  "
                f"real@smd {r['dice_real_at_smd']:.3f}  "
                f"ceiling ratio {r['ceiling_ratio']:.3f}",
                flush=True,
            )
    print("mean ceiling ratio per site:")
    for site in SITE_NAMES[:6]:
        vals = [r["ceiling_ratio"] for r in rows if r["site"] == site]
        extra = f"  (replay ratio in --run: {replay[site]:.3f})" if site in replay else ""
        if site in contrasts:
            c = contrasts[site]
            extra += (
                f"  target contrast real {c['contrast_real']:+.3f} "
                f"replay {c['contrast_replay']:+.3f}, "
                f"empty replay masks {c['replay_empty_masks']:.2f}, "
                f"best mask Dice to a real train mask: "
                f"replay {c['replay_mask_match']:.3f}, real test {c['real_mask_match']:.3f}; "
                f"on real test, trained on replay: "
                f"precision {c['replay_trained_precision']:.3f} recall "
                f"{c['replay_trained_recall']:.3f}, on real: {c['real_trained_precision']:.3f} "
                f"{c['real_trained_recall']:.3f}; target median / background 99th percentile: real "
                f"{c['real_target_median']:.3f} / {c['real_background_p99']:.3f}, replay "
                f"{c['replay_target_median']:.3f} / {c['replay_background_p99']:.3f}"
            )
        print(f"  {site:8s} {np.mean(vals):.3f}{extra}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "profile": args.profile,
                    "rows": rows,
                    "run": str(args.run or ""),
                    "replay_ratio": replay,
                    "contrast": contrasts,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
