"""The backbone cache: one folder per backbone spec hash under this process's cache folder.

A backbone is named by its key (the hash of its spec, :meth:`SMDSpec.key`) and identified by its
digest (:func:`backbone_digest`: a sha256 of the spec and every tensor's name, dtype, shape and
bytes). The digest is what the learner announces and a site checks: it does not depend on how a
file was written, so a site that received the backbone as arrays in a message (another machine,
:func:`install_backbone`) and the learner that pre-trained it agree on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from simulator.paths import cache_root
from simulator.smd.backbone import SMDBackbone, SMDSpec

_KEY = re.compile(r"[0-9a-f]{16}")


def backbone_path(spec: SMDSpec) -> Path:
    return backbone_file(spec.key())


def backbone_file(key: str) -> Path:
    """Where this process's cache keeps the backbone with spec key ``key`` (16 hex digits, so a
    key from a message cannot name a path outside the cache)."""
    if not _KEY.fullmatch(str(key)):
        raise ValueError(f"backbone key {key!r}: expected 16 hexadecimal digits")
    return cache_root() / "smd" / key / "backbone.pt"


def backbone_digest(spec: SMDSpec, state: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """sha256 of the spec and of every tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode())
    for name in sorted(state):
        value = state[name]
        a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        a = np.ascontiguousarray(a)
        h.update(f"\n{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def spec_values(spec: SMDSpec) -> dict:
    """The spec as plain values (tuples as lists): what a backbone file and a backbone message
    hold."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.to_json().items()}


def save_backbone(model: SMDBackbone, path: Path, info: dict) -> None:
    """Write atomically so a crash never leaves a half-written backbone in the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    torch.save({"spec": spec_values(model.spec), "state": model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)
    (path.parent / "info.json").write_text(
        json.dumps({"spec": model.spec.to_json(), **info}, indent=2)
    )


def _read(path: Path) -> tuple[SMDSpec, dict[str, torch.Tensor], dict]:
    """``weights_only=True``: the file can hold tensors and plain values only, so reading it runs no
    code."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return SMDSpec.from_json(blob["spec"]), blob["state"], dict(blob.get("info", {}))


def cached_digest(path: Path) -> str:
    """The digest of the backbone stored at ``path``."""
    spec, state, _ = _read(Path(path))
    return backbone_digest(spec, state)


def load_backbone(
    path: Path, device: str | torch.device = "cpu", sha256: str | None = None
) -> SMDBackbone:
    """Load a cached backbone (frozen, eval mode); with ``sha256``, only if its digest is that
    one."""
    spec, state, _ = _read(Path(path))
    if sha256 is not None and backbone_digest(spec, state) != sha256:
        raise ValueError(
            f"{path}: backbone digest differs from the one announced ({sha256[:12]}...); not loaded"
        )
    model = SMDBackbone(spec)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval().to(device)


def install_backbone(key: str, sha256: str, spec: SMDSpec, state: Mapping[str, np.ndarray]) -> bool:
    """Keep a backbone received as arrays in this process's cache; returns whether it was written.

    Refused (``ValueError``) unless ``spec`` has key ``key`` and ``(spec, state)`` has digest
    ``sha256``. A backbone already cached with that digest is left as it is.
    """
    if spec.key() != key:
        raise ValueError(
            f"backbone key {key!r} is not the key of the spec sent with it ({spec.key()})"
        )
    if backbone_digest(spec, state) != sha256:
        raise ValueError(
            f"backbone {key}: the arrays sent do not have the announced digest ({sha256[:12]}...)"
        )
    path = backbone_file(key)
    if path.exists() and cached_digest(path) == sha256:
        return False
    model = SMDBackbone(spec)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    save_backbone(model, path, {"installed_from": "message", "digest": sha256})
    return True
