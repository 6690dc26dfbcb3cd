"""How far apart are first-order `smg`, `pga_exact` and `pga_sym` at the lookaheads a run uses?

``tests/test_pga.py`` checks that first-order PGA and the stop-gradient objective (`pga_exact`)
agree to second order as the lookahead shrinks. This script measures the gap where the methods
run: on the quick network of a finished run folder, at two states (the untrained network of the
run's seed, where stage 1 starts, and the run's final weights), for lookaheads 0.01 to 3. The
current domain is a batch of the last visited site's train pairs, built in this process from the
run's config as the other diagnostics here do (only norms are printed); the replayed domains are
batches of the earlier sites' replay from the run's checkpoint. For each lookahead it reports,
as the mean over ``--draws`` batches and splits:

* ``rel_fo``, ``rel_exact``, ``rel_sym``: ``||g - g_plain|| / ||g_plain||`` of each method's
  gradient (the ``align_rel_change`` a run logs), ``g_plain`` the same terms without the meta part;
* ``gap_exact``: ``||g_fo - g_exact|| / ||g_fo||``, the first-order step's distance to the
  objective it approximates.

Usage::

    .venv/bin/python docs/diagnostics/pga_gap.py RUN_DIR [--draws 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from resolution_gap import _checkpoint as _latest  # noqa: E402  (a script beside this one)

from server.methods.exact_gradient import alignment_gradient
from server.methods.meta_gradient import Roles, first_order_gradient
from simulator.benchmarks.catalog import SITE_NAMES
from simulator.config import Config
from simulator.driver.plan import site_spec
from simulator.segmentation import UNet, build_model
from sites.datasets import build_site_data

LOOKAHEADS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _norm(a: list[torch.Tensor], b: list[torch.Tensor] | None = None) -> float:
    if b is None:
        return float(torch.sqrt(sum((x.double() ** 2).sum() for x in a)))
    return float(
        torch.sqrt(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b, strict=True)))
    )


def _domains(
    cur: tuple[torch.Tensor, torch.Tensor],
    replay: list[tuple[torch.Tensor, torch.Tensor]],
    batch: int,
    gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A step's domains as the learner draws them: a batch of the current site, the replay batch
    shared out over the earlier sites."""
    per = -(-batch // max(len(replay), 1))
    out = []
    for (x, y), n in [(cur, batch), *[(r, per) for r in replay]]:
        idx = torch.randint(len(x), (min(n, len(x)),), generator=gen)
        out.append((x[idx], y[idx]))
    return out


def gap(run: Path, draws: int) -> dict:
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    arrays = _latest(run)
    order = [r["visited"] for r in list(csv.DictReader((run / "R.csv").open()))[1:]]
    last, earlier = order[-1], order[:-1]
    d = build_site_data(
        dataclasses.replace(site_spec(cfg, last, SITE_NAMES.index(last)), data_dir="")
    )
    cur = (
        torch.from_numpy(d.train_x.astype(np.float32)),
        torch.from_numpy(d.train_y.astype(np.float32)),
    )
    replay = [
        (
            torch.from_numpy(arrays[f"learner/bank/replay/{s}/x"]).float(),
            torch.from_numpy(arrays[f"learner/bank/replay/{s}/y"].astype(np.float32)),
        )
        for s in earlier
    ]
    final = UNet(1, cfg.model.width, cfg.model.depth)
    final.load_state_dict(
        {
            k[len("learner/weights/") :]: torch.from_numpy(v.copy())
            for k, v in arrays.items()
            if k.startswith("learner/weights/")
        }
    )
    states = {
        "untrained": build_model(1, cfg.model.width, cfg.model.depth, seed=cfg.run.seed),
        "final": final,
    }
    lr = cfg.train.lr
    out = {"run": run.name, "current": last, "replayed": earlier, "lr": lr, "rows": []}
    for state, model in states.items():
        model.train()
        sums: dict[float, dict[str, float]] = {a: {} for a in LOOKAHEADS}
        for k in range(draws):
            gen = torch.Generator().manual_seed(1000 + k)
            doms = _domains(cur, replay, cfg.train.batch_size, gen)
            rest = [int(i) for i in torch.randperm(len(doms) - 1, generator=gen) + 1]
            half = (
                len(rest) // 2
            )  # a random split: the current site and half the replayed sites in A
            roles = Roles(
                current=0,
                replay=tuple(range(1, len(doms))),
                group_a=(0, *sorted(rest[:half])),
                group_b=tuple(sorted(rest[half:])),
            )
            plain = first_order_gradient(model, doms, roles, 0.0).grads
            base = _norm(plain)
            for a in LOOKAHEADS:
                fo = first_order_gradient(model, doms, roles, a * lr).grads
                ex = alignment_gradient(model, doms, roles, a * lr).grads
                sy = alignment_gradient(model, doms, roles, a * lr, symmetric=True).grads
                vals = {
                    "rel_fo": _norm(fo, plain) / base,
                    "rel_exact": _norm(ex, plain) / base,
                    "rel_sym": _norm(sy, plain) / base,
                    "gap_exact": _norm(fo, ex) / _norm(fo),
                }
                for key, v in vals.items():
                    sums[a][key] = sums[a].get(key, 0.0) + v / draws
        out["rows"] += [
            {"state": state, "lookahead": a, **{k: round(v, 4) for k, v in s.items()}}
            for a, s in sums.items()
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = gap(a.run, a.draws)
    print(
        f"{res['run']}: current {res['current']}, replayed {', '.join(res['replayed'])}, lr "
        f"{res['lr']}"
    )
    print(
        f"  {'state':<9} {'lookahead':>9} {'rel_fo':>8} {'rel_exact':>9} {'rel_sym':>8} "
        f"{'gap_exact':>9}"
    )
    for r in res["rows"]:
        print(
            f"  {r['state']:<9} {r['lookahead']:>9} {r['rel_fo']:>8.3f} {r['rel_exact']:>9.3f} "
            f"{r['rel_sym']:>8.3f} {r['gap_exact']:>9.3f}"
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
