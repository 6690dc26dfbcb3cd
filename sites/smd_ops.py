"""A site's Site-Modulated Diffusion work: the public backbone in its own cache, prompt tuning,
and the checks of its replay (fidelity, memorisation, attribution); only scalars and the prompt
leave, through the site's egress guard."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import RecordDict

from simulator import schemas
from simulator.payloads import (
    AttributeRequest,
    BackboneCheck,
    BackboneOffer,
    FidelityRequest,
    PromptReply,
    TuneRequest,
)
from simulator.seeding import torch_generator
from sites.refusals import SiteRefusal

#: the fewest images a replay set must hold for the attribution detector to score it
MIN_SET = 4
#: two learner-supplied images closer than this (RMS, intensities in [0, 1]) are one image twice:
#: a query holding them is refused (copies would turn a set's mean into one image's score)
DUPLICATE_RMS = 0.01


def require_dp_delta(own: Any, data: Any) -> None:
    """Under DP (``own``: the site's settings), refuse (``dp-delta``, with n) a delta that is not
    below 1/n, n the site's train cases."""
    if own.dp_epsilon > 0 and own.dp_delta > 0:
        n = len(np.unique(data.case_ids()))
        if own.dp_delta >= 1.0 / n:
            raise SiteRefusal("dp-delta", f"dp_delta {own.dp_delta} >= 1/{n}", count=n)


def refuse_duplicates(op: str, images: np.ndarray) -> None:
    """Refuse a query whose learner-supplied images hold the same image twice, or nearly."""
    from sites.memorisation import _pairwise_rms

    d = _pairwise_rms(images, images)
    np.fill_diagonal(d, np.inf)
    if len(images) > 1 and float(d.min()) < DUPLICATE_RMS:
        raise SiteRefusal("refused-query", f"{op}: two candidates within {DUPLICATE_RMS} RMS")


class SiteSMD:
    """The SMD operations of one site (``site``): its backbone, its own tuned prompt, its checks."""

    def __init__(self, site: Any) -> None:
        """``site``: the :class:`sites.site.Site` whose data, guard and messages these use."""
        self.site = site
        self._key: tuple[str, str] | None = None  # the public SMD backbone loaded: (key, digest)
        self._model = None
        self._prompt: np.ndarray | None = None  # this site's own tuned prompt

    def _backbone(self, key: str, sha256: str):
        """The public backbone the learner named by key, loaded only from this site's own SMD cache,
        only if its digest is the announced one, and without running code (``weights_only``)."""
        from simulator.smd.cache import backbone_file, load_backbone

        if self._key != (key, sha256):
            path = backbone_file(key)
            if not path.exists():
                raise SiteRefusal("backbone-missing", f"no SMD backbone {key} at {path}")
            self._model = load_backbone(path, self.site.device, sha256=sha256)
            self._key = (key, sha256)
        return self._model

    def operations(self) -> dict[str, tuple]:
        """This collaborator's learner operations: name -> (function, payload type)."""
        return {
            "preload_smd": (self.preload, None),
            "has_backbone": (self.has_backbone, BackboneCheck),
            "install_backbone": (self.install_backbone, BackboneOffer),
            "tune_prompt": (self.tune_prompt, TuneRequest),
            "fidelity": (self.fidelity, FidelityRequest),
            "attribute": (self.attribute, AttributeRequest),
        }

    def preload(self) -> RecordDict:
        """Import what prompt tuning needs (no data is read) at the start of a run, beside the other
        processes, instead of on one core when this site's prompt is due."""
        from simulator.smd.backbone import preload

        return self.site.metrics(schemas.PRELOAD, import_seconds=preload())

    def has_backbone(self, req: BackboneCheck) -> RecordDict:
        """Whether this site's own SMD cache holds the announced public backbone (1) or not (0)."""
        from simulator.smd.cache import backbone_file, cached_digest

        path = backbone_file(req.key)
        present = path.exists() and cached_digest(path) == req.sha256
        return self.site.metrics(schemas.BACKBONE_CHECK, present=int(present))

    def install_backbone(self, req: BackboneOffer) -> RecordDict:
        """Keep the public backbone sent as arrays in this site's own cache, if its digest
        checks."""
        from simulator.smd.backbone import SMDSpec
        from simulator.smd.cache import install_backbone

        spec = SMDSpec.from_json(dict(req.spec))
        written = install_backbone(req.key, req.sha256, spec, req.state)
        return self.site.metrics(
            schemas.BACKBONE_INSTALL,
            installed=int(written),
            backbone_bytes=int(sum(a.nbytes for a in req.state.values())),
        )

    def tune_prompt(self, req: TuneRequest) -> RecordDict:
        """Invert this site's train pairs into a K x D prompt of the frozen public backbone."""
        from sites.prompt import tune_prompt

        backbone = self._backbone(req.backbone_key, req.backbone_sha256)
        d = self.site.data
        own = self.site.settings  # DP is the site's own setting, never the request's
        if own.dp_epsilon > 0:  # DP-SGD: every read of private data accounted, no private loss sent
            require_dp_delta(own, d)
            from simulator.dp import case_groups, noise_multiplier
            from sites.dp_prompt import dp_tune_prompt
            from sites.dp_train import site_budget

            # the mechanism's randomness: the site's secret over the whole request, never the
            # request's seed (a learner that knows the seed could recompute the noise)
            gen = self.site.state.keyed_generator("dp-prompt", self.site.request[1])
            # in model mode the site keeps a share of its budget for its visit's training
            n = len(case_groups(d.case_ids()))
            budget = site_budget(own, n)
            eps, delta = budget.prompt
            q = min(1.0, req.batch / n)
            mechanism = (noise_multiplier(eps, delta, q, req.steps), q, req.steps)
            spent = self.site.dataset_budget.charge(
                f"prompt:{self.site.request[1]}",
                [mechanism],
                budget.delta,
                own.dp_budget,
                self.site.state.run,
                own.dp_epsilon,
            )
            prompt, logs = dp_tune_prompt(
                backbone,
                d.train_x,
                d.train_y,
                d.case_ids(),
                req.steps,
                req.lr,
                req.batch,
                gen,
                eps,
                delta,
                own.dp_clip,
            )
        else:
            prompt, logs = tune_prompt(
                backbone,
                d.train_x,
                d.train_y,
                req.steps,
                req.lr,
                req.batch,
                torch_generator(req.seed),
                candidates=req.candidates,
                stop_tol=req.stop_tol,
                check_every=req.check_every,
            )
        self._prompt = prompt
        logs["data_bytes"] = int(d.train_x.nbytes + d.train_y.nbytes)
        if own.dp_epsilon > 0:
            logs["dp_dataset_epsilon"] = spent
        spec = backbone.spec
        return self.site.send(
            PromptReply(prompt, logs),
            self.site.schema(
                "prompt",
                schemas.PROMPT_LOGS_DP if own.dp_epsilon > 0 else schemas.PROMPT_LOGS,
                {"prompt/tokens": ((spec.tokens, spec.token_dim), "float32")},
            ),
        )

    def fidelity(self, req: FidelityRequest) -> RecordDict:
        """Fidelity (TSTR, intensity distance) and memorisation of this site's replay; scalars
        leave, at the resolutions of :data:`schemas.FIDELITY`.

        A declared query on learner-supplied images: answered ``fidelity_queries`` times a run
        (the same request again is free), refused when the replay holds an image twice; the copy
        threshold is the site's own. A site under DP sends its TSTR figures only.
        """
        from sites.fidelity import intensity_distance, tstr
        from sites.memorisation import membership_inference, nearest_neighbours

        own = self.site.settings
        if set(req.replay) != {f"{self.site.name}/x", f"{self.site.name}/y"}:
            raise SiteRefusal("refused-query", "fidelity: the replay of this site only")
        synth = (req.replay[f"{self.site.name}/x"], req.replay[f"{self.site.name}/y"])
        refuse_duplicates("fidelity", synth[0])
        self.site.state.query("fidelity", self.site.request[1], own.fidelity_queries)
        d = self.site.data
        t0 = time.perf_counter()
        dev = self.site.device
        out = tstr((d.train_x, d.train_y), (d.test_x, d.test_y), synth, req.steps, req.seed, dev)
        if own.dp_epsilon > 0:  # nothing else computed on private data leaves without DP
            out["fidelity_seconds"] = time.perf_counter() - t0
            declared = {n: schemas.FIDELITY[n] for n in schemas.FIDELITY_DP_NAMES}
            return self.site.metrics(declared, **out)
        out.update(intensity_distance(d.train_x, synth[0]))
        out["synthetic_foreground"] = float(synth[1].mean())
        out["real_foreground"] = float(d.train_y.mean())
        t1 = time.perf_counter()
        out.update(nearest_neighbours(synth[0], d.train_x, own.nn_threshold))
        prompt = self._prompt if self._prompt is not None else req.prompt.get("tokens")
        backbone = self._model
        if (
            backbone is None and prompt is not None and req.backbone_key
        ):  # a process that did not tune it
            backbone = self._backbone(req.backbone_key, req.backbone_sha256)
        if prompt is not None and backbone is not None:
            out.update(
                membership_inference(
                    backbone, prompt, (d.train_x, d.train_y), (d.test_x, d.test_y), seed=req.seed
                )
            )
        out.update(fidelity_seconds=t1 - t0, memorisation_seconds=time.perf_counter() - t1)
        return self.site.metrics(schemas.FIDELITY, **out)

    def attribute(self, req: AttributeRequest) -> RecordDict:
        """Score each replay set with a real-vs-public detector trained on this site's data.

        Only the mean score of each set leaves (``score/<set>``, to 0.001), never a score per
        image, so the detector cannot be queried image by image: sets smaller than ``MIN_SET``, and
        queries holding an image twice (or nearly), are refused. A declared query: answered
        ``attribution_queries`` times a run. A site under DP does not answer it (the detector is
        trained on its private images without DP).
        """
        from sites.attribution import train_detector_and_score

        own = self.site.settings
        if own.dp_epsilon > 0:
            raise SiteRefusal("refused-query", "attribute: not under DP")
        if min(req.set_sizes, default=0) < MIN_SET or sum(req.set_sizes) != len(req.queries):
            raise SiteRefusal("refused-query", f"attribute: sets of {list(req.set_sizes)} images")
        refuse_duplicates("attribute", req.queries)
        self.site.state.query("attribute", self.site.request[1], own.attribution_queries)
        with self.site.parallel_phase():
            scores = train_detector_and_score(
                self.site.data.train_x,
                req.public,
                req.queries,
                req.steps,
                req.seed,
                device=self.site.device,
            )
        bounds = np.cumsum([0, *req.set_sizes])
        means = {
            f"score/{s}": float(scores[a:b].mean())
            for s, a, b in zip(req.sets, bounds[:-1], bounds[1:], strict=True)
        }
        declared = {**schemas.SCORES, **{f"score/{s}": schemas.SHARE for s in req.sets}}
        return self.site.metrics(declared, n_scored=len(scores), **means)
