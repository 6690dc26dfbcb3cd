"""The backbone cache: one folder per backbone spec hash under the user cache folder."""

from __future__ import annotations

import hashlib
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
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in model.spec.to_json().items()}
    torch.save({"spec": spec, "state": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    (path.parent / "info.json").write_text(json.dumps({"spec": model.spec.to_json(), **info}, indent=2))


def file_sha256(path: Path) -> str:
    """The sha256 of a backbone file (what the learner announces and a site checks before loading)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_backbone(path: Path, device: str | torch.device = "cpu", sha256: str | None = None) -> SMDBackbone:
    """Load a cached backbone (frozen, eval mode).

    ``weights_only=True``: the file can hold tensors and plain values only, so loading it runs no
    code. With ``sha256`` the file must have that hash (a site checks what it was told to load).
    """
    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(f"{path}: sha256 differs from the one announced ({sha256[:12]}...); not loaded")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = SMDBackbone(SMDSpec.from_json(blob["spec"]))
    model.load_state_dict(blob["state"])
    model.requires_grad_(False)
    return model.eval().to(device)
