"""The SMD phases of a run: finding or pre-training the public backbone, and the checks of the
replay after the last stage (attribution, a grid of samples)."""

from __future__ import annotations

import json
from typing import TextIO

from simulator.driver.plan import RunPlan
from simulator.driver.progress import Progress
from simulator.driver.runfolder import RunFolder
from simulator.errors import ResumeError


def pretrain_progress(total: int, stream: TextIO, enabled: bool = True):
    prog = Progress(total_units=total, stream=stream, enabled=enabled)

    def report(step: int, steps: int, loss: float) -> None:
        prog.done = step
        prog.line(f"SMD pre-training (public data only) step {step}/{steps} loss {loss:.4f}")

    return prog, report


def prepare_smd(plan: RunPlan, stream: TextIO, progress: bool) -> dict:
    """Find the run's cached SMD backbone (``plan.smd``), or pre-train it on public data."""
    from simulator.devices import resolve_device
    from simulator.smd.cache import cached_digest
    from simulator.smd.pretrain import ensure_backbone

    spec = plan.smd
    prog, report = pretrain_progress(spec.pretrain_steps, stream, progress)
    device = str(resolve_device(plan.config.runtime.device))
    try:
        path, cached = ensure_backbone(spec, device, report)
    finally:
        prog.close()
    prog.message(
        f"smg-sim: SMD backbone {'reused from cache' if cached else 'pre-trained and cached'}: "
        f"{path}"
    )
    info = json.loads((path.parent / "info.json").read_text())
    sha = cached_digest(path)  # what the learner announces to sites, whatever machine holds it
    return {
        "backbone_path": str(path),
        "backbone_cached": cached,
        "backbone": info,
        "backbone_sha256": sha,
    }


def finish_smd(plan: RunPlan, eng, folder: RunFolder, prog: Progress) -> dict:
    """Per-site fidelity (kept by the engine), the attribution test, and a grid of replay
    samples."""
    from simulator.seeding import derive_seed
    from simulator.smd.pretrain import PUBLIC_POOLS

    cfg = plan.config
    out: dict = {"sites": dict(eng.smd.sites)}
    if len(plan.order) >= 2 and cfg.privacy.dp_epsilon > 0:
        out["attribution"] = {
            "skipped": "the sites are under DP: a detector trained on their images without DP "
            "would send figures outside the bound"
        }
    elif len(plan.order) >= 2:
        prog.line("SMD attribution: every site scores every site's replay")
        make_pool, _ = PUBLIC_POOLS[plan.smd.benchmark]
        public, _, _ = make_pool(
            derive_seed(cfg.smd.public_seed, "attribution-negatives"), 128, cfg.data.image_size
        )
        out["attribution"] = eng.smd.attribution(public)
    folder.file("replay_samples.png").write_bytes(eng.smd.replay_grid())
    out["replay"] = eng.smd.replay_stats()
    return out


def check_backbone(now: dict, then: dict) -> None:
    """A resumed run must replay from the very backbone it started with."""
    if now.get("backbone_sha256") != then.get("backbone_sha256"):
        raise ResumeError(
            f"the SMD backbone differs from the one the run started with "
            f"({then.get('backbone_path')}, sha256 {str(then.get('backbone_sha256'))[:12]}...); "
            f"the run cannot be resumed"
        )
