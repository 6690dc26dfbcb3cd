"""Whether a run folder can be resumed: unfinished, checkpointed, and made with the settings the
current code still resolves for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulator.config import Config
from simulator.driver.checkpoint import Checkpoint, read_checkpoint
from simulator.driver.plan import method_hparams, run_sites
from simulator.driver.runfolder import FAILED, MARKER
from simulator.errors import ConfigError, ResumeError


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(saved: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """The keys (``section.key``) whose values differ, or that only one side has."""
    a, b = _flatten(saved), _flatten(resolved)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def check_resumable(run_dir: Path) -> tuple[Config, Checkpoint, Path | None]:
    """The run's config, its latest checkpoint and its shared-artifact folder; or a ResumeError."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise ResumeError(f"{run_dir} is not a run folder (no config.json)")
    if (run_dir / MARKER).exists():
        raise ResumeError(f"{run_dir} holds a finished run ({MARKER}); there is nothing to resume")
    saved = json.loads(path.read_text())
    try:
        cfg = Config.from_dict(saved, source=str(path))
    except ConfigError as exc:
        raise ResumeError(
            f"{path}: the current code cannot read this run's settings: {exc}"
        ) from None
    diff = config_differences(saved, cfg.to_dict())
    if diff:
        raise ResumeError(
            f"{path}: the current code resolves this run's settings differently at "
            f"{', '.join(diff)}; resume it with the code that started it"
        )
    method = json.loads((run_dir / "method.json").read_text())
    now = method_hparams(cfg, cfg.run.method)
    diff = config_differences(method["hyperparameters"], now)
    if diff:
        raise ResumeError(
            f"{run_dir / 'method.json'}: the current code resolves {cfg.run.method}'s "
            f"hyper-parameters differently at {', '.join(diff)}"
        )
    ckpt = read_checkpoint(run_dir, len(run_sites(cfg)))
    if ckpt is None:
        why = (
            (run_dir / FAILED).read_text().splitlines()[0]
            if (run_dir / FAILED).exists()
            else "no FAILED marker"
        )
        raise ResumeError(
            f"{run_dir} has no checkpoint (it stopped before its first evaluation finished: "
            f"{why}); start it again"
        )
    shared = ckpt.snapshot.get("reuse_folder") or ""
    return cfg, ckpt, Path(shared) if shared else None
