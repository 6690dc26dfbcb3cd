"""Replay at the learner: synthetic (image, mask) pairs sampled from site prompts.

The learner keeps the prompts that sites exported and samples N pairs per site from
the frozen public backbone with DDIM and an explicit generator per site, so that
replay is reproducible. Masks are thresholded at 0 after sampling; samples are
resized from the backbone's size to the data size.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from simulator.seeding import derive_seed, torch_generator
from simulator.smd.backbone import from_model_space
from simulator.smd.cache import load_backbone


class ReplayBank:
    """Prompts by site and the replay sampled from them (sampled once per prompt)."""

    def __init__(
        self,
        backbone_path: str,
        run_seed: int,
        per_site: int,
        steps: int,
        data_size: int,
        channels: int,
        device: str = "cpu",
    ) -> None:
        self.backbone = load_backbone(Path(backbone_path), device)
        self.run_seed = run_seed
        self.per_site = per_site
        self.steps = steps
        self.data_size = data_size
        self.channels = channels
        self.prompts: dict[str, np.ndarray] = {}
        self._replay: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sample_seconds = 0.0
        self.sampled_pairs = 0

    def add_prompt(self, site: str, prompt: np.ndarray) -> None:
        spec = self.backbone.spec
        if prompt.shape != (spec.tokens, spec.token_dim):
            raise ValueError(
                f"prompt of site {site!r} has shape {prompt.shape}, "
                f"expected ({spec.tokens}, {spec.token_dim})"
            )
        self.prompts[site] = prompt.astype(np.float32)
        self._replay.pop(site, None)

    def replay(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        """``per_site`` synthetic pairs of ``site`` (images float32 [0, 1], masks uint8)."""
        if site not in self._replay:
            if site not in self.prompts:
                raise KeyError(f"no prompt for site {site!r}; known: {sorted(self.prompts)}")
            gen = torch_generator(derive_seed(self.run_seed, "replay", site))
            t0 = time.perf_counter()
            x = self.backbone.sample(
                torch.from_numpy(self.prompts[site]), self.per_site, self.steps, gen
            ).cpu()
            self.sample_seconds += time.perf_counter() - t0
            self.sampled_pairs += self.per_site
            self._replay[site] = from_model_space(x, self.data_size, self.channels)
        return self._replay[site]

    def synthetic(self, site: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` fresh synthetic pairs of ``site`` from its prompt (not kept): what the learner
        trains on during the site's visit in prompt-only mode."""
        t0 = time.perf_counter()
        x = self.backbone.sample(
            torch.from_numpy(self.prompts[site]), n, self.steps, torch_generator(seed)
        ).cpu()
        self.sample_seconds += time.perf_counter() - t0
        self.sampled_pairs += n
        return from_model_space(x, self.data_size, self.channels)

    def arrays(self, sites: list[str]) -> dict[str, np.ndarray]:
        """Replay of several sites as one array group: ``<site>/x`` and ``<site>/y``."""
        out = {}
        for s in sites:
            x, y = self.replay(s)
            out[f"{s}/x"], out[f"{s}/y"] = x, y
        return out

    def state(self) -> dict:
        """Prompts and replay sampled so far (for a checkpoint): arrays keyed ``prompt/<site>``,
        ``replay/<site>/x`` and ``replay/<site>/y``, and the sampling counters."""
        arrays = {f"prompt/{s}": p for s, p in self.prompts.items()}
        for s, (x, y) in self._replay.items():
            arrays[f"replay/{s}/x"], arrays[f"replay/{s}/y"] = x, y
        return {
            "arrays": arrays,
            "sampled_pairs": self.sampled_pairs,
            "sample_seconds": self.sample_seconds,
        }

    def restore(self, state: dict) -> None:
        """Take back what :meth:`state` returned; replay is not sampled again."""
        arrays = state["arrays"]
        self.prompts = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("prompt/")}
        self._replay = {
            k.split("/")[1]: (arrays[k], arrays[k[:-2] + "/y"])
            for k in arrays
            if k.startswith("replay/") and k.endswith("/x")
        }
        self.sampled_pairs = int(state["sampled_pairs"])
        self.sample_seconds = float(state["sample_seconds"])
