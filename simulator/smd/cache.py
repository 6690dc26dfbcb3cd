"""The backbone cache: one folder per backbone spec hash under the user cache folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from simulator.paths import cache_root
from simulator.smd.backbone import SMDBackbone, SMDSpec


def backbone_path(spec: SMDSpec) -> Path:
    return cache_root() / "smd" / spec.key() / "backbone.pt"


def save_backbone(model: SMDBackbone, path: Path, info: dict) -> None:
    """Write atomically so a crash never leaves a half-written backbone in the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": model.spec.to_json(), "state": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    (path.parent / "info.json").write_text(json.dumps({"spec": model.spec.to_json(), **info}, indent=2))


def load_backbone(path: Path, device: str | torch.device = "cpu") -> SMDBackbone:
    """Load a cached backbone (frozen, eval mode)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = SMDBackbone(SMDSpec.from_json(blob["spec"]))
    model.load_state_dict(blob["state"])
    model.requires_grad_(False)
    return model.eval().to(device)
