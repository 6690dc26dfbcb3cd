"""Benchmarks (timing targets live here, never in tests).

``step_cost`` measures one outer step of a method at a config's sizes (time and the peak
resident memory), each method in a fresh process (``python -m simulator.driver.bench``) so
that peaks do not mix. Hyper-parameters are resolved as for a run, so ``--set`` applies.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from simulator.config import Config


def measure_step(cfg: Config, name: str, replay_sites: int, steps: int) -> dict[str, float | str]:
    """Seconds per outer step of method ``name`` on random data at ``cfg``'s sizes, on the device
    ``runtime.device`` names (in this process; a CUDA step is timed to its end); with
    ``privacy.dp_epsilon`` set, its DP step (per-case gradients, clipping, noise) on a batch of
    the same size."""
    import torch

    from server.methods import build_method
    from simulator.devices import resolve_device, to_device
    from simulator.driver.plan import method_hparams
    from simulator.method import Batch, StageContext
    from simulator.seeding import torch_generator
    from simulator.segmentation import build_model

    torch.set_num_threads(cfg.runtime.torch_threads)
    dev = resolve_device(cfg.runtime.device)
    size, b = cfg.data.image_size, cfg.train.batch_size
    gen = torch_generator(0)

    def pair(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand((n, 1, size, size), generator=gen)
        return to_device(dev, x, (x > 0.6).float())

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    per = -(-b // max(replay_sites, 1))
    batch = Batch(*pair(b), {f"r{k}": pair(per) for k in range(replay_sites)})
    model = build_model(1, cfg.model.width, cfg.model.depth, seed=0).to(dev)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(name, model, method_hparams(cfg, name))
    method.begin_stage(StageContext("a", 2, steps, dev, gen, list(batch.replay)))
    step = method.update
    if cfg.privacy.dp_epsilon > 0:
        from simulator.dp import PrivateMean

        private = PrivateMean(cfg.privacy.dp_train_clip, 1.0, float(b), torch_generator(1))
        queries = method.dp_queries(bool(batch.replay))

        def step(batch: Batch) -> dict[str, float]:
            private.sigma = queries**0.5
            return method.dp_update(batch, private)

    step(batch)  # the first step allocates; it is not timed
    sync()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    sync()
    seconds = (time.perf_counter() - t0) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {
        "method": name,
        "dp": cfg.privacy.dp_epsilon > 0,
        "device": str(dev),
        "seconds_per_step": seconds,
        "peak_rss_mb": peak / 1024,
        "rss_after_first_step_mb": base / 1024,
    }
    if dev.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def step_cost(cfg: Config, methods: list[str], stages: list[int], steps: int = 10) -> list[dict]:
    """Seconds per outer step and peak RSS of each method at each stage (stage ``s`` replays
    ``s - 1`` earlier sites), each method in a process of its own, its stages in rising order
    (a later stage's peak is the larger)."""
    from server.methods import method_class
    from simulator.driver.plan import method_hparams
    from simulator.errors import ConfigError

    # unknown names and bad hyper-parameters fail here, before any process starts
    for name in methods:
        hp = method_hparams(cfg, name)
        why = method_class(name).dp_check(hp) if cfg.privacy.dp_epsilon > 0 else ""
        if why:
            raise ConfigError(f"privacy.dp_epsilon: method {name!r} has no DP step: {why}")
    out = []
    for name in methods:
        job = json.dumps(
            {"config": cfg.to_dict(), "method": name, "stages": sorted(stages), "steps": steps}
        )
        res = subprocess.run(
            [sys.executable, "-m", "simulator.driver.bench"],
            input=job,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            tail = "\n".join(res.stderr.strip().splitlines()[-6:])
            raise RuntimeError(f"timing {name} failed (exit {res.returncode}):\n{tail}")
        out += json.loads(res.stdout.strip().splitlines()[-1])
    return sorted(out, key=lambda r: (r["stage"], methods.index(r["method"])))


def run_phases(cfg: Config, method: str) -> dict:
    """One whole run of ``method`` (6 sites, random order, seed 0) in a temporary folder: its
    timings."""
    import dataclasses
    import tempfile

    from simulator.driver import api

    with tempfile.TemporaryDirectory(prefix="smg-sim-bench-") as tmp:
        run_cfg = dataclasses.replace(
            cfg.run, method=method, sites=6, order="random", seed=0, out=str(Path(tmp) / "run")
        )
        res = api.run(dataclasses.replace(cfg, run=run_cfg), progress=False)
        return {"method": method, **res.timings, "metrics": res.metrics}


def _child() -> None:
    job = json.loads(sys.stdin.read())
    cfg = Config.from_dict(job["config"])
    rows = [
        {**measure_step(cfg, job["method"], stage - 1, job["steps"]), "stage": stage}
        for stage in job["stages"]
    ]
    print(json.dumps(rows))


if __name__ == "__main__":
    _child()
