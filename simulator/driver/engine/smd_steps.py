"""The engine's Site-Modulated Diffusion steps: a site's prompt and replay checks, attribution.

A mixin of :class:`~simulator.driver.engine.loop.Engine` (it uses the engine's actors, ledger,
clock, progress, retries and artifact cache).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from simulator.driver.artifacts import SiteArtifacts, artifact_key
from simulator.driver.audit.attribution import attribution_summary
from simulator.driver.engine.runtime import get
from simulator.messages import metrics
from simulator.payloads import PromptReply


class SMDSteps:
    """Prompt tuning at a site, the fidelity of its replay, and the attribution test."""

    def _smd_stage(self, stage: int, site: str) -> dict[str, float]:
        self.progress.line(
            f"stage {stage}/{len(self.order)} site {site} prompt tuning and replay check"
        )
        out = self.tune_and_check(site)
        self.progress.smd_checked()
        return out

    def tune_and_check(self, site: str) -> dict[str, float]:
        """Prompt tuning at the site, then the fidelity of the replay of that prompt.

        With an artifact cache, a prompt and figures an earlier run of the grid obtained for
        the same inputs are reused, and the site is not asked again.
        """
        key = art = None
        claimed = False
        if self.cache is not None:
            key = artifact_key(self.cfg, self.plan.specs[site], self.backbone_key)
            art = self.cache.load(key)
            if art is None:
                claimed = self.cache.claim(key)
                if not claimed:  # another run of the grid is making it right now
                    art = self.cache.wait(key)
        if art is not None:  # the reply that site sent in that run, handed to the learner as such
            reply = PromptReply(art.tokens, {}).to_record(f"site:{site}", "learner")
            get(self.actors.learner.absorb_prompt.remote(reply, site))
            self.reused[site] = {"key": key, "from": art.source}
            out = dict(art.logs)
        else:
            try:
                out, tokens = self.calls.with_retries(
                    site, "prompt tuning", lambda attempt: self._tune_and_check(site, attempt)
                )
                if self.cache is not None:
                    self.cache.save(key, SiteArtifacts(tokens, out, self.plan.out.name))
            finally:
                if claimed:
                    self.cache.release(key)
        self.smd_sites[site] = out
        return out

    def _ensure_backbone(self, site: str, attempt: int = 0) -> None:
        """The site's own cache holds the public backbone: asked by key and digest, and sent as
        arrays only if it does not (another machine, or a node with a cache of its own)."""
        msg = get(self.actors.learner.backbone_check_message.remote(site))
        if metrics(self.calls.call(site, "has_backbone", msg, retry=attempt))["present"]:
            return
        offer = get(self.actors.learner.backbone_offer_message.remote(site))
        self.calls.call(site, "install_backbone", offer, retry=attempt, phase="backbone transfer")

    def _tune_and_check(self, site: str, attempt: int = 0) -> tuple[dict[str, float], np.ndarray]:
        """The site's prompt figures and fidelity checks, and the prompt it exported."""
        with self.clock.phase("prompt_tuning"):
            self.collect_preload(site)
            self._ensure_backbone(site, attempt)
            msg = get(self.actors.learner.tune_message.remote(site))
            reply = self.calls.call(site, "tune_prompt", msg, retry=attempt)
            out = get(self.actors.learner.absorb_prompt.remote(reply, site))
            tokens = PromptReply.from_record(reply).tokens
        entries = self.ledger.last["arrays"]
        out["prompt_bytes"] = sum(a["bytes"] for a in entries)  # as serialised in the message
        out["prompt_values_bytes"] = sum(4 * int(np.prod(a["shape"])) for a in entries)
        with self.clock.phase("replay_sampling"):  # the learner samples the replay to send it
            msg = get(self.actors.learner.fidelity_message.remote(site))
        t0 = time.perf_counter()
        fid = metrics(self.calls.call(site, "fidelity", msg, retry=attempt))
        wall = time.perf_counter() - t0
        memorisation = min(wall, fid.get("memorisation_seconds", 0.0))
        self.clock.add("memorisation", memorisation)
        self.clock.add("fidelity", wall - memorisation)
        out.update(fid)
        return out, tokens

    def attribution(self, public: np.ndarray) -> dict[str, Any]:
        """Each site scores every site's replay with its own detector; argmax attributes."""
        with self.clock.phase("attribution"):
            return self._attribution(public)

    def _attribution(self, public: np.ndarray) -> dict[str, Any]:
        refs = {}
        for site in self.order:
            msg = get(self.actors.learner.attribution_message.remote(site, self.order, public))
            self.ledger.record(msg, dst=f"site:{site}")
            refs[site] = self.actors.sites[site].attribute.remote(msg)
        scores = []
        for site in self.order:
            reply = get(refs[site])
            self.ledger.record(reply)
            got = metrics(reply)  # only each replay set's mean score leaves a site
            scores.append([got[f"score/{s}"] for s in self.order])
        return attribution_summary(np.array(scores), self.order)

    def replay_grid(self) -> bytes:
        """A PNG of replay samples of every site (rows), as bytes."""
        return get(self.actors.learner.replay_grid.remote(self.order))

    def replay_stats(self) -> dict[str, float]:
        return get(self.actors.learner.replay_stats.remote())
