"""The engine's Site-Modulated Diffusion steps: a site's prompt and replay checks, attribution.

A collaborator of :class:`~simulator.driver.engine.loop.Engine`: it reaches the sites through the
engine's calls (ledger, retries) and the learner through the engine's learner handle.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from simulator.driver.artifacts import ArtifactCache, SiteArtifacts, artifact_key
from simulator.driver.audit.attribution import attribution_summary
from simulator.messages import metrics
from simulator.payloads import PromptReply


class SMDSteps:
    """Prompt tuning at a site, the fidelity of its replay, and the attribution test.

    ``engine``: the run's :class:`~simulator.driver.engine.loop.Engine`, of which this uses the
    plan, backend, calls, ledger, clock, progress and learner; ``cache``: the grid's artifacts.
    """

    def __init__(self, engine: Any, cache: ArtifactCache | None) -> None:
        self.engine = engine
        self.cache = cache
        self.on = False
        self.backbone_key = ""
        #: per site: prompt-tuning logs and the replay's fidelity and memorisation statistics
        self.sites: dict[str, dict[str, float]] = {}
        #: per site whose prompt and figures came from the cache: its key and the run that made them
        self.reused: dict[str, dict[str, str]] = {}
        #: per site, its answer to preload_smd while it is still on its way
        self._preloads: dict[str, Any] = {}

    @property
    def _learner(self) -> Any:
        return self.engine.learner

    # -- set-up -------------------------------------------------------------------------------
    def preload(self, backbone_key: str, done: frozenset[str] = frozenset()) -> None:
        """Ask the learner and every site that will tune a prompt to import the backbone's
        libraries now (several seconds of CPU per process), all at once, rather than one after
        another when each prompt is due. Sites whose prompt is done (``done``) or in the grid's
        artifact cache are not asked; the answers are recorded later (:meth:`collect_preload`)."""
        eng = self.engine
        if not eng.backend.persistent_sites:  # a node may answer each message in a new process
            return
        self._learner.submit("preload_smd")  # its next call (enable_replay) runs after it
        for site in eng.order:
            if site in done:
                continue
            if self.cache is not None:
                key = artifact_key(eng.cfg, eng.plan.specs[site], backbone_key)
                if self.cache.load(key) is not None:
                    continue
            self._preloads[site] = eng.calls.send(site, "preload_smd")

    def collect_preload(self, site: str) -> None:
        """Record the site's answer to preload_smd, if it was asked (waits for it)."""
        pending = self._preloads.pop(site, None)
        if pending is None:
            return
        try:
            self.engine.calls.receive(site, "preload_smd", pending)
        except Exception:  # noqa: BLE001 - the work that follows repeats itself if the site died
            pass

    def collect_preloads(self) -> None:
        for site in list(self._preloads):
            self.collect_preload(site)

    def enable(self, backbone_path: str, channels: int) -> None:
        """The learner loads the public backbone; prompts and replay are kept from here on."""
        self._learner.call("enable_replay", backbone_path, channels)
        self.on = True
        self.backbone_key = Path(backbone_path).parent.name  # the cache folder: the spec's hash

    # -- each stage ---------------------------------------------------------------------------
    def stage(self, stage: int, site: str) -> dict[str, float]:
        eng = self.engine
        eng.progress.line(f"stage {stage}/{len(eng.order)} site {site} prompt tuning, replay check")
        out = self.tune_and_check(site)
        eng.progress.smd_checked()
        return out

    def tune_and_check(self, site: str) -> dict[str, float]:
        """Prompt tuning at the site, then the fidelity of the replay of that prompt.

        With an artifact cache, a prompt and figures an earlier run of the grid obtained for
        the same inputs are reused, and the site is not asked again.
        """
        eng = self.engine
        key = art = None
        claimed = False
        if self.cache is not None:
            key = artifact_key(eng.cfg, eng.plan.specs[site], self.backbone_key)
            art = self.cache.load(key)
            if art is None:
                claimed = self.cache.claim(key)
                if not claimed:  # another run of the grid is making it right now
                    art = self.cache.wait(key)
        if art is not None:  # the reply that site sent in that run, handed to the learner as such
            reply = PromptReply(art.tokens, {}).to_record(f"site:{site}", "learner")
            self._learner.call("absorb_prompt", reply, site)
            self.reused[site] = {"key": key, "from": art.source}
            out = dict(art.logs)
        else:
            try:
                out, tokens = eng.calls.with_retries(
                    site, "prompt tuning", lambda attempt: self._tune_and_check(site, attempt)
                )
                if self.cache is not None:
                    self.cache.save(key, SiteArtifacts(tokens, out, eng.plan.out.name))
            finally:
                if claimed:
                    self.cache.release(key)
        self.sites[site] = out
        return out

    def _ensure_backbone(self, site: str, attempt: int = 0) -> None:
        """The site's own cache holds the public backbone: asked by key and digest, and sent as
        arrays only if it does not (another machine, or a node with a cache of its own)."""
        calls = self.engine.calls
        msg = self._learner.call("backbone_check_message", site)
        if metrics(calls.call(site, "has_backbone", msg, retry=attempt))["present"]:
            return
        offer = self._learner.call("backbone_offer_message", site)
        calls.call(site, "install_backbone", offer, retry=attempt)

    def _tune_and_check(self, site: str, attempt: int = 0) -> tuple[dict[str, float], np.ndarray]:
        """The site's prompt figures and fidelity checks, and the prompt it exported."""
        eng = self.engine
        with eng.clock.phase("prompt_tuning"):
            self.collect_preload(site)
            self._ensure_backbone(site, attempt)
            msg = self._learner.call("tune_message", site)
            reply = eng.calls.call(site, "tune_prompt", msg, retry=attempt)
            out = self._learner.call("absorb_prompt", reply, site)
            tokens = PromptReply.from_record(reply).tokens
        entries = eng.ledger.last["arrays"]
        out["prompt_bytes"] = sum(a["bytes"] for a in entries)  # as serialised in the message
        out["prompt_values_bytes"] = sum(4 * int(np.prod(a["shape"])) for a in entries)
        with eng.clock.phase("replay_sampling"):  # the learner samples the replay to send it
            msg = self._learner.call("fidelity_message", site)
        t0 = time.perf_counter()
        fid = metrics(eng.calls.call(site, "fidelity", msg, retry=attempt))
        wall = time.perf_counter() - t0
        memorisation = min(wall, fid.get("memorisation_seconds", 0.0))
        eng.clock.add("memorisation", memorisation)
        eng.clock.add("fidelity", wall - memorisation)
        out.update(fid)
        return out, tokens

    # -- after the last stage -------------------------------------------------------------
    def attribution(self, public: np.ndarray) -> dict[str, Any]:
        """Each site scores every site's replay with its own detector; argmax attributes."""
        eng = self.engine
        with eng.clock.phase("attribution"):
            pending = {}
            for site in eng.order:
                msg = self._learner.call("attribution_message", site, eng.order, public)
                pending[site] = eng.calls.send(site, "attribute", msg)
            scores = []
            for site in eng.order:
                got = metrics(eng.calls.receive(site, "attribute", pending[site]))
                scores.append([got[f"score/{s}"] for s in eng.order])  # a mean per replay set
            return attribution_summary(np.array(scores), eng.order)

    def replay_grid(self) -> bytes:
        """A PNG of replay samples of every site (rows), as bytes."""
        return self._learner.call("replay_grid", self.engine.order)

    def replay_stats(self) -> dict[str, float]:
        return self._learner.call("replay_stats")

    # -- checkpoints ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"smd_sites": self.sites, "reused": self.reused}

    def restore(self, snap: dict[str, Any]) -> None:
        self.sites = dict(snap["smd_sites"])
        self.reused = dict(snap["reused"])
