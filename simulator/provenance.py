"""What code and software a run ran on: written to every run folder as ``provenance.json``
(apart from ``config.json``, which a resumed run must match).

The code digest is the SHA-256 of the package files (``simulator/``, ``sites/``, ``server/``:
their sources and profiles), so committing results or notes does not change it; from a git
checkout the commit and whether those files differ from it are added.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simulator", "sites", "server")
#: the packages whose versions a run records
KEY_PACKAGES = ("numpy", "ray", "flwr", "diffusers", "opacus", "pandas", "scipy")


def code_files() -> list[Path]:
    """The package files whose bytes make up the code digest, in a fixed order."""
    out = []
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
                out.append(p)
    return out


def code_digest() -> str:
    h = hashlib.sha256()
    for p in code_files():
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether the package files differ from it ({} outside git)."""
    if not (ROOT / ".git").exists():
        return {}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", *PACKAGES))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": dirty} if commit else {}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def provenance(device: str) -> dict[str, Any]:
    """The project's version, its code digest and git state, Python, torch, CUDA, the key
    packages and the device the run was configured for."""
    import torch

    return {
        "version": _version("smg-sim"),
        "code_digest": code_digest(),
        "git": git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "packages": {name: _version(name) for name in KEY_PACKAGES},
    }


def run_code(folder: Path) -> str:
    """The short code digest a run folder's ``provenance.json`` records ("unknown" for runs
    written without it; "mixed" when a resumed run changed code)."""
    import json

    path = Path(folder) / "provenance.json"
    if not path.exists():
        return "unknown"
    sessions = json.loads(path.read_text()).get("sessions", [])
    digests = {s.get("code_digest", "") for s in sessions}
    if len(digests) != 1:
        return "mixed" if digests else "unknown"
    return digests.pop()[:12] or "unknown"
