"""What a comparison computes once per (seed, site): the site's prompt and its replay's figures.

A site's prompt depends on the public backbone, the site's data and the prompt seed; its
replay on the prompt and the replay seed; its fidelity and memorisation figures on both and
the site's data. None of these depends on the method or the visiting order, so the runs of
one grid share them: the first run that tunes a site's prompt stores what left the site (the
prompt and scalars, nothing else) under a hash of every input, and later runs take it from
there instead of asking the site again. Each run folder's ``reuse.json`` says what was reused
and from which run; results are identical, since every step is seeded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config import Config
from simulator.driver.processes import pid_alive
from simulator.payloads import SiteSpec


@dataclass(frozen=True)
class SiteArtifacts:
    """One site's exported prompt and the scalar logs of its tuning and replay checks."""

    tokens: np.ndarray
    logs: dict[str, float]
    source: str


def artifact_key(cfg: Config, spec: SiteSpec, backbone: str) -> str:
    """A hash of every input the prompt, the replay and their checks depend on."""
    s = cfg.smd
    inputs = {
        "backbone": backbone,
        "site": dataclasses.asdict(spec),
        "seed": cfg.run.seed,
        "prompt": [s.prompt_steps, s.prompt_lr, s.prompt_batch, s.prompt_candidates],
        "replay": [s.replay_per_site, s.sample_steps, cfg.data.image_size],
        "checks": [s.fidelity_steps, cfg.privacy.nn_threshold],
    }
    if s.prompt_stop_tol > 0 and cfg.privacy.dp_epsilon <= 0:  # DP tuning runs all its steps
        inputs["prompt"] += [s.prompt_stop_tol, s.prompt_check_every]
    if cfg.privacy.dp_epsilon > 0:  # keys of runs without DP stay what they were
        inputs["dp"] = [cfg.privacy.dp_epsilon, cfg.privacy.dp_delta, cfg.privacy.dp_clip]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


class ArtifactCache:
    """A folder of :class:`SiteArtifacts`, one ``<key>.npz`` each, written atomically.

    Runs of a grid that run at once take a lock file per key (``<key>.lock``, holding the host
    and process id) before they make an artifact, so that one makes it and the others wait for it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load(self, key: str) -> SiteArtifacts | None:
        path = self.root / f"{key}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return SiteArtifacts(z["tokens"], json.loads(str(z["logs"])), str(z["source"]))

    def save(self, key: str, art: SiteArtifacts) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            np.savez(
                fh, tokens=art.tokens, logs=json.dumps(art.logs, sort_keys=True), source=art.source
            )
        os.replace(tmp, self.root / f"{key}.npz")

    def _lock(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def claim(self, key: str) -> bool:
        """Take the right to make ``key``; False while another live process of this host holds
        it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self._lock(key)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = lock.read_text().partition(":") if lock.exists() else ("", "", "")
                if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
                    lock.unlink(missing_ok=True)  # its maker died: take it over
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{socket.gethostname()}:{os.getpid()}")
            return True
        return False

    def release(self, key: str) -> None:
        self._lock(key).unlink(missing_ok=True)

    def wait(self, key: str, timeout: float = 3600.0, poll: float = 1.0) -> SiteArtifacts | None:
        """The artifact another run is making, once it is saved (None if its maker gave up or
        died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            art = self.load(key)
            if art is not None:
                return art
            if not self._lock(key).exists():
                return self.load(key)
            time.sleep(poll)
        return None
