"""Benchmarks (timing targets live here, never in tests).

``step_cost`` measures one outer step of a method at a profile's sizes (time and the
peak resident memory it adds), each method in a fresh process so that peaks do not mix.
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time, torch
from server.methods import build_method
from simulator.config import build_config
from simulator.method import Batch, StageContext
from simulator.segmentation import build_model
name, profile, replay_sites, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = build_config(profile)
torch.set_num_threads(cfg.runtime.torch_threads)
s, b = cfg.data.image_size, cfg.train.batch_size
gen = torch.Generator().manual_seed(0)
def pair(n):
    x = torch.rand((n, 1, s, s), generator=gen); return x, (x > 0.6).float()
per = -(-b // max(replay_sites, 1))
batch = Batch(*pair(b), {f"r{k}": pair(per) for k in range(replay_sites)})
model = build_model(1, cfg.model.width, cfg.model.depth, seed=0)
method = build_method(name, model, {"lr": cfg.train.lr})
method.begin_stage(StageContext("a", 2, steps, torch.device("cpu"), gen, list(batch.replay)))
method.update(batch)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
for _ in range(steps):
    method.update(batch)
dt = (time.perf_counter() - t0) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"method": name, "seconds_per_step": dt, "peak_rss_mb": peak / 1024,
                  "rss_after_first_step_mb": base / 1024}))
"""


def step_cost(methods: list[str], profile: str = "quick", replay_sites: int = 5, steps: int = 10) -> list[dict]:
    """Seconds per outer step and peak RSS for each method, each in its own process."""
    out = []
    for name in methods:
        res = subprocess.run([sys.executable, "-c", _CHILD, name, profile, str(replay_sites), str(steps)],
                             capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out
