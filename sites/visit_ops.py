"""A site's training and evaluation: the visit in progress (start, chunks of steps, finish) and
the Dice of the learner's weights on the site's test split."""

from __future__ import annotations

import os
from typing import Any

from flwr.app import RecordDict

from simulator import schemas
from simulator.devices import to_host
from simulator.payloads import EvaluateRequest, ModelReply, TrainRequest, VisitRequest
from simulator.segmentation import dice_per_image, predict
from simulator.visit import LocalVisit, build_unet
from sites.refusals import SiteRefusal

#: the exit code of a site process killed by an injected fault
EXIT_INJECTED = 70


class VisitOps:
    """The visit and evaluation operations of one site (``site``: a :class:`sites.site.Site`)."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self._visit: LocalVisit | None = None
        self._visit_request = ""  # the digest of the request that started the visit

    def operations(self) -> dict[str, tuple]:
        """This collaborator's learner operations: name -> (function, payload type)."""
        return {
            "start_visit": (self.start_visit, VisitRequest),
            "train": (self.train, TrainRequest),
            "finish_visit": (self.finish_visit, None),
            "visit": (self.visit, VisitRequest),
            "evaluate": (self.evaluate, EvaluateRequest),
        }

    def position(self) -> str:
        """Where the visit in progress stands (its request and step; "" when none): a step of a
        visit is a different request at each point even when its payload is the same."""
        if self._visit is None:
            return ""
        return f"{self._visit_request}@{self._visit.step}"

    def _require_visit(self) -> LocalVisit:
        if self._visit is None:
            raise SiteRefusal("no-visit", "no visit in progress; start_visit first")
        return self._visit

    def start_visit(self, req: VisitRequest) -> RecordDict:
        """Receive the learner's weights, method and replay; prepare local training (under the
        site's DP, every step a DP-SGD step: :mod:`sites.dp_train`)."""
        s = self.site
        self._visit = None
        visit = LocalVisit.start(req, s.name, s.tensors[:2], s.device, s.method_factory)
        own = s.settings
        if own.dp_epsilon > 0:
            reason = type(visit.method).dp_check(visit.method.hp)
            if reason:
                raise SiteRefusal("dp-method", f"{req.method} cannot train under DP: {reason}")
            from sites.dp_train import plan_dp_training

            # sampling and noise from the site's secret over the request, never its seed
            gen = s.state.keyed_generator("dp-train", s.request[1])
            queries = visit.method.dp_queries(bool(visit.replay))
            visit.dp = plan_dp_training(
                own, s.data.case_ids(), req.steps, req.batch_size, queries, gen
            )
            dp = visit.dp
            visit.dp.dataset_epsilon = s.dataset_budget.charge(
                f"visit:{s.request[1]}",
                [(dp.sigma, dp.sample_rate, dp.steps)],
                dp.budget_delta,
                own.dp_budget,
                s.state.run,
                own.dp_epsilon,
            )
        self._visit = visit
        self._visit_request = s.request[1]
        return s.metrics(schemas.VISIT_START, steps=req.steps, replay_sites=len(self._visit.replay))

    def _crash_point(self, step: int) -> None:
        if self.site.crash_in == "visit" and step > 0:
            os._exit(EXIT_INJECTED)  # injected fault: the process dies in the middle of its visit

    def train(self, req: TrainRequest) -> RecordDict:
        """Run up to ``req.steps`` outer steps of the current visit; returns scalar logs."""
        v = self._require_visit()
        means, dt = v.run(req.steps, self._crash_point)
        values = {"step": v.step, "seconds": dt}
        if "loss" in means:
            values["loss"] = means["loss"]
        return self.site.metrics(schemas.TRAIN, **values)

    def finish_visit(self) -> RecordDict:
        """End the visit; export the trained weights and the method's state (kind ``model``)."""
        v = self._require_visit()
        if self.site.crash_in == "visit":
            os._exit(EXIT_INJECTED)  # injected fault (a visit too short to die between steps)
        weights, state, logs, mean_loss = v.finish()
        self._visit = None
        method = type(v.method)
        dp_names = {}
        if v.dp is not None:  # no loss on private data leaves; the privacy parameters do
            logs = {k: val for k, val in logs.items() if k in schemas.DP_VISIT_LOGS}
            logs.update(v.dp.logs())
            mean_loss = 0.0
            dp_names = schemas.DP_TRAIN
        arrays = {f"weights/{k}": spec for k, spec in v.received.items()}
        arrays.update(
            {f"state/{k}": spec for k, spec in method.state_spec(v.received).items() if k in state}
        )
        declared = {
            **schemas.MODEL,
            **method.log_names,
            **method.summary_names([self.site.name, *v.ctx.replay_sites]),
            **dp_names,
        }
        reply = ModelReply(
            weights, state, steps=v.step, train_seconds=v.seconds, mean_loss=mean_loss, logs=logs
        )
        schema = self.site.schema("model", declared, arrays, groups=("weights", "state"))
        return self.site.send(reply, schema)

    def visit(self, req: VisitRequest) -> RecordDict:
        """A whole visit in one call (the form a Flower ClientApp uses)."""
        self.start_visit(req)
        self.train(TrainRequest(self._require_visit().ctx.steps))
        return self.finish_visit()

    def evaluate(self, req: EvaluateRequest) -> RecordDict:
        """Dice of the given weights on this site's test split (only scalars leave)."""
        s = self.site
        if s.crash_in == "evaluation":
            os._exit(EXIT_INJECTED)  # injected fault: the process dies in its evaluation
        model = build_unet(req.arch, req.weights, s.device)
        test_x, test_y = s.tensors[2:]
        with s.parallel_phase():
            pred = predict(model, test_x, req.eval_batch_size)
        dice = to_host(dice_per_image(pred, test_y))
        return s.metrics(
            schemas.EVALUATE, dice=float(dice.mean()), dice_std=float(dice.std()), n=len(dice)
        )
