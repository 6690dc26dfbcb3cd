"""Pre-training of the SMD backbone on public data only, and the cached entry point.

For the phantom benchmark the public pool is drawn with random appearance from a
seed namespace that no site uses; for mni152 it is the MNI152 template itself
under random deformation and appearance. Each image is conditioned on tokens
produced by a small MLP from its appearance parameters, so that the token space
learns to steer appearance. No site's data is involved at any point.

User data sets have no public pool of their own; ``smd.pool`` names one of the
public pools to pre-train on instead (single-channel data only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from simulator.benchmarks import catalog as benchmarks
from simulator.benchmarks import mni152, phantom
from simulator.config import Config, ConfigError
from simulator.devices import to_device
from simulator.seeding import torch_generator
from simulator.smd.backbone import SMDBackbone, SMDSpec, to_model_space
from simulator.smd.cache import backbone_path, load_backbone, save_backbone

PUBLIC_POOLS = {
    "phantom": (phantom.public_pool, phantom.APPEARANCE_DIM),
    "mni152": (mni152.public_pool, mni152.APPEARANCE_DIM),
}


def pool_name(cfg: Config) -> str:
    """The public pool that pre-trains this run's backbone: ``smd.pool``, or the benchmark's own."""
    if cfg.smd.pool != "auto":
        return cfg.smd.pool
    kind = benchmarks.kind(cfg.data.benchmark)
    if kind not in PUBLIC_POOLS:
        raise ConfigError(
            f"smd.pool: the {kind} benchmark has no public pre-training pool of its own, and SMD "
            f"replay never trains on a site's images; set smd.pool to one of "
            f"{', '.join(PUBLIC_POOLS)} (single-channel data), or choose a method without "
            f"replay (finetune, ewc, lwf, mldg)"
        )
    return kind


ProgressFn = Callable[[int, int, float], None]


def smd_spec(cfg: Config, channels: int) -> SMDSpec:
    """The backbone spec of a run's config (what the cache is keyed by)."""
    s = cfg.smd
    pool = pool_name(cfg)
    if channels != 1:
        raise ConfigError(
            f"smd.pool: the public pools are single-channel but the sites' images have "
            f"{channels} channels; SMD replay needs single-channel data"
        )
    return SMDSpec(
        benchmark=pool,
        channels=channels,
        data_size=cfg.data.image_size,
        image_size=s.image_size,
        widths=s.width_tuple(),
        tokens=s.tokens,
        token_dim=s.token_dim,
        cond_dim=PUBLIC_POOLS[pool][1],
        train_timesteps=s.train_timesteps,
        prediction=s.prediction,
        pretrain_steps=s.pretrain_steps,
        pretrain_batch=s.pretrain_batch,
        pretrain_lr=s.pretrain_lr,
        public_pool=s.public_pool,
        public_seed=s.public_seed,
    )


def pretrain(
    spec: SMDSpec, device: str = "cpu", progress: ProgressFn | None = None
) -> tuple[SMDBackbone, dict]:
    """Train a backbone from scratch on the public pool of ``spec.benchmark``."""
    make_pool, _ = PUBLIC_POOLS[spec.benchmark]
    t0 = time.perf_counter()
    images, masks, cond = make_pool(spec.public_seed, spec.public_pool, spec.data_size)
    X = to_model_space(images, masks, spec.image_size)
    C = torch.from_numpy(cond)
    with torch.random.fork_rng(devices=[]):  # deterministic init without touching global state
        torch.manual_seed(spec.public_seed)
        model = SMDBackbone(spec)
    model.to(device)
    X, C = to_device(torch.device(device), X, C)
    gen = torch_generator(spec.public_seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=1e-4)
    warmup = max(1, spec.pretrain_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 - i / spec.pretrain_steps))
    )
    losses = []
    model.train()
    for step in range(1, spec.pretrain_steps + 1):
        idx = torch.randint(len(X), (spec.pretrain_batch,), generator=gen).to(device)
        loss = model.denoise_loss(X[idx], model.tokens_from_condition(C[idx]), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step % 20 == 0 or step == spec.pretrain_steps):
            progress(step, spec.pretrain_steps, sum(losses[-20:]) / len(losses[-20:]))
    with torch.no_grad():
        model.prompt_init.copy_(model.tokens_from_condition(C).mean(0))
    model.requires_grad_(False)
    model.eval()
    info = {
        "pretrain_seconds": time.perf_counter() - t0,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "parameters": int(sum(p.numel() for p in model.unet.parameters())),
    }
    return model.cpu(), info


def ensure_backbone(
    spec: SMDSpec, device: str = "cpu", progress: ProgressFn | None = None, force: bool = False
) -> tuple[Path, bool]:
    """The cached backbone's path, pre-training it first if needed; returns (path, was_cached)."""
    path = backbone_path(spec)
    if path.exists() and not force:
        load_backbone(path)  # a corrupt file fails here, not inside a site
        return path, True
    model, info = pretrain(spec, device, progress)
    save_backbone(model, path, info)
    return path, False
