"""The central sequential learner: segmentation weights, method state, messages.

``Learner`` is a plain class; the engine runs it as a Ray actor. It owns the
current weights and the algorithm state, prepares the message for each visit
(weights, method, hyper-parameters, replay) and absorbs the site's reply. It
never receives a site's pixels: replies are ``model`` messages that passed the
site's egress guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from server.replay import ReplayBank
from simulator.config import Config
from simulator.devices import resolve_device, to_device
from simulator.filetrace import start_trace
from simulator.method import Method
from simulator.outlines import encode_png, label, outlined_tile
from simulator.payloads import (
    AttributeRequest,
    BackboneCheck,
    BackboneOffer,
    EvaluateRequest,
    FidelityRequest,
    ModelArch,
    ModelReply,
    PromptReply,
    TuneRequest,
    VisitRequest,
)
from simulator.seeding import derive_seed
from simulator.segmentation import build_model
from simulator.smd.cache import backbone_digest, spec_values
from simulator.visit import LocalVisit


class Learner:
    """Holds the model between visits and speaks to sites only through messages.

    ``method`` is the method's class and ``hparams`` its resolved hyper-parameter table (the run
    plan resolves both once).
    """

    def __init__(
        self,
        cfg: Config,
        method: type[Method],
        hparams: Mapping[str, Any],
        in_channels: int,
        trace_file: str | None = None,
        data_root: str | None = None,
    ) -> None:
        if trace_file and data_root:
            start_trace(trace_file, "learner", [data_root])
        torch.set_num_threads(max(1, cfg.runtime.torch_threads))  # replay sampling runs here
        self.cfg = cfg
        self.method = method
        self.run_seed = cfg.run.seed
        self.arch = ModelArch(in_channels, cfg.model.width, cfg.model.depth)
        model = build_model(
            in_channels,
            cfg.model.width,
            cfg.model.depth,
            seed=derive_seed(self.run_seed, "model_init"),
        )
        self.weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        self.state: dict[str, np.ndarray] = {}
        self.hparams = dict(hparams)
        self.visits: list[dict[str, Any]] = []
        self.bank: ReplayBank | None = None
        self.backbone_key = ""
        self.backbone_sha256 = ""
        self.visited: list[str] = []

    # -- SMD replay --------------------------------------------------------------------
    def preload_smd(self) -> float:
        """Import what the backbone needs ahead of :meth:`enable_replay`; returns the seconds."""
        from simulator.smd.backbone import preload

        return preload()

    def enable_replay(self, backbone_path: str, channels: int) -> None:
        """Load the public backbone; prompts and replay are kept from here on."""
        smd = self.cfg.smd
        self.bank = ReplayBank(
            backbone_path,
            self.run_seed,
            smd.replay_per_site,
            smd.sample_steps,
            self.cfg.data.image_size,
            channels,
            device=str(resolve_device(self.cfg.runtime.device)),
        )
        model = self.bank.backbone
        self.backbone_key = model.spec.key()
        self.backbone_sha256 = backbone_digest(model.spec, model.state_dict())

    def backbone_check_message(self, site: str) -> RecordDict:
        """Ask a site whether its own cache holds the public backbone (key and digest)."""
        return BackboneCheck(self.backbone_key, self.backbone_sha256).to_record(
            "learner", f"site:{site}"
        )

    def backbone_offer_message(self, site: str) -> RecordDict:
        """The public backbone as arrays, for a site whose cache lacks it."""
        model = self._bank().backbone
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
        return BackboneOffer(
            self.backbone_key, self.backbone_sha256, spec_values(model.spec), state
        ).to_record("learner", f"site:{site}")

    def _bank(self) -> ReplayBank:
        if self.bank is None:
            raise RuntimeError(
                f"method {self.method.name!r} needs SMD replay, but replay is not enabled"
            )
        return self.bank

    def tune_message(self, site: str) -> RecordDict:
        """Ask a site to tune its prompt against the public backbone."""
        smd = self.cfg.smd
        return TuneRequest(
            backbone_key=self.backbone_key,
            backbone_sha256=self.backbone_sha256,
            steps=smd.prompt_steps,
            lr=smd.prompt_lr,
            batch=smd.prompt_batch,
            candidates=smd.prompt_candidates,
            seed=derive_seed(self.run_seed, "prompt", site),
            stop_tol=smd.prompt_stop_tol,
            check_every=smd.prompt_check_every,
        ).to_record("learner", f"site:{site}")

    def absorb_prompt(self, reply: RecordDict, site: str) -> dict[str, float]:
        """Keep a site's exported prompt; its replay is sampled when first needed."""
        prompt = PromptReply.from_record(reply)
        self._bank().add_prompt(site, prompt.tokens)
        return dict(prompt.logs)

    def fidelity_message(self, site: str) -> RecordDict:
        """Send a site the replay of its own prompt, for TSTR and intensity checks."""
        bank = self._bank()
        return FidelityRequest(
            bank.arrays([site]),
            self.cfg.smd.fidelity_steps,
            derive_seed(self.run_seed, "tstr", site),
            {"tokens": bank.prompts[site]},
            self.backbone_key,
            self.backbone_sha256,
        ).to_record("learner", f"site:{site}")

    def attribution_message(self, site: str, sites: list[str], public: np.ndarray) -> RecordDict:
        """Send a site every site's replay (one set per site) and public images, for its
        detector."""
        sets = [self._bank().replay(s)[0] for s in sites]
        return AttributeRequest(
            tuple(sites),
            tuple(len(x) for x in sets),
            np.concatenate(sets),
            public,
            self.cfg.smd.detector_steps,
            derive_seed(self.run_seed, "detector", site),
        ).to_record("learner", f"site:{site}")

    def replay_grid(self, sites: list[str], n: int = 6) -> bytes:
        """A PNG grid of synthetic samples (rows: sites; mask outline in red), as bytes."""
        rows = []
        for site in sites:
            x, y = self._bank().replay(site)
            tiles = [outlined_tile(x[i, 0], y[i, 0], 96) for i in range(min(n, len(x)))]
            label(tiles[0], site)
            rows.append(np.concatenate(tiles, axis=1))
        return encode_png(np.concatenate(rows, axis=0))

    def replay_stats(self) -> dict[str, float]:
        if self.bank is None:
            return {}
        return {
            "sampled_pairs": self.bank.sampled_pairs,
            "sample_seconds": self.bank.sample_seconds,
        }

    def _visit_request(self, site: str, stage: int) -> VisitRequest:
        train = self.cfg.train
        replay = (
            self._bank().arrays([s for s in self.visited if s != site])
            if self.method.uses_replay
            else {}
        )
        match = self.method.uses_replay and train.replay_resolution_match > 0
        return VisitRequest(
            arch=self.arch,
            method=self.method.name,
            hparams=self.hparams,
            stage=stage,
            steps=train.steps_per_stage,
            batch_size=train.batch_size,
            seed=derive_seed(self.run_seed, "train", stage, site),
            channels_last=train.channels_last,
            weights=self.weights,
            state=self.state,
            replay=replay,
            match_p=train.replay_resolution_match if match else 0.0,
            match_size=self.cfg.smd.image_size if match else 0,
        )

    def visit_message(self, site: str, stage: int) -> RecordDict:
        """The message that starts a visit of ``site`` at ``stage``."""
        return self._visit_request(site, stage).to_record("learner", f"site:{site}")

    def train_locally(self, site: str, stage: int) -> dict[str, float]:
        """Prompt-only mode: the visit of ``site`` runs here, on synthetic pairs of that site
        sampled from the prompt it exported, with the same method, replay, seeds and steps as a
        visit at the site would use; nothing is sent to the site."""
        from server.methods import build_method

        dev = resolve_device(self.cfg.runtime.device)
        x, y = self._bank().synthetic(
            site,
            self.cfg.smd.synthetic_per_site,
            derive_seed(self.run_seed, "synthetic-train", site),
        )
        pair = to_device(dev, x, y)
        visit = LocalVisit.start(self._visit_request(site, stage), site, pair, dev, build_method)
        visit.run(visit.ctx.steps)
        self.weights, self.state, logs, mean_loss = visit.finish()
        logs = {
            "steps": visit.step,
            "train_seconds": visit.seconds,
            "mean_loss": mean_loss,
            "synthetic_pairs": len(x),
            **logs,
        }
        self.visits.append({"site": site, "stage": stage, **logs})
        if site not in self.visited:
            self.visited.append(site)
        return logs

    def absorb(self, reply: RecordDict, site: str, stage: int) -> dict[str, float]:
        """Take the weights and state a site returns after its visit."""
        model = ModelReply.from_record(reply)
        self.weights = model.weights
        self.state = model.state
        logs = {
            "steps": model.steps,
            "train_seconds": model.train_seconds,
            "mean_loss": model.mean_loss,
            **model.logs,
        }
        self.visits.append({"site": site, "stage": stage, **logs})
        if site not in self.visited:
            self.visited.append(site)
        return logs

    def evaluate_message(self, site: str = "*") -> RecordDict:
        """The message asking a site to evaluate the current weights."""
        return EvaluateRequest(self.arch, self.cfg.train.eval_batch_size, self.weights).to_record(
            "learner", f"site:{site}"
        )

    def weights_checkpoint(self) -> dict[str, np.ndarray]:
        """The current weights (for the run folder's final weights)."""
        return dict(self.weights)

    def snapshot(self) -> dict[str, Any]:
        """Everything the learner carries from one stage to the next, for a checkpoint.

        Arrays (weights, method state, prompts, replay) keyed by group, and JSON-able facts.
        No random stream carries state across stages: every stage, site and visit draws from
        a seed derived from the run seed, so nothing else is needed to continue identically.
        """
        arrays = {f"weights/{k}": v for k, v in self.weights.items()}
        arrays.update({f"state/{k}": v for k, v in self.state.items()})
        bank = self.bank.state() if self.bank is not None else {"arrays": {}}
        arrays.update({f"bank/{k}": v for k, v in bank["arrays"].items()})
        facts = {
            "visited": list(self.visited),
            "visits": self.visits,
            "bank": {k: v for k, v in bank.items() if k != "arrays"}
            if self.bank is not None
            else None,
        }
        return {"arrays": arrays, "facts": facts}

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot`'s output (replay must be enabled first if it was)."""
        arrays, facts = snap["arrays"], snap["facts"]

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        self.weights = group("weights/")
        self.state = group("state/")
        self.visited = list(facts["visited"])
        self.visits = list(facts["visits"])
        if facts["bank"] is not None:
            self._bank().restore({"arrays": group("bank/"), **facts["bank"]})
