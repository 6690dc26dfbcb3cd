"""The stage loop: one run's sites and learner, every message between them, and recovery.

It knows the sites and the learner only through the engine's protocol
(:mod:`simulator.driver.engine.protocol`), whichever backend hosts them. It checks that every
site's own settings are the plan's, evaluates the untrained model everywhere, then per stage
visits one site, tunes its prompt (with SMD replay, :class:`.smd_steps.SMDSteps`) and evaluates
every site. A site whose process dies is restarted by its backend (Ray) and the interrupted work
is repeated from the stage's inputs; a site that does not answer in time fails the run, which
can then be resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import RecordDict

from simulator.driver.artifacts import ArtifactCache
from simulator.driver.engine.calls import SiteCalls
from simulator.driver.engine.live import LiveFigures
from simulator.driver.engine.protocol import Backend, SiteDied
from simulator.driver.engine.smd_steps import SMDSteps
from simulator.driver.faults import FaultPlan
from simulator.driver.ledger import Ledger
from simulator.driver.phases import PhaseClock
from simulator.driver.plan import RunPlan
from simulator.driver.progress import RunProgress
from simulator.driver.results import merge_guard_sessions
from simulator.messages import metrics
from simulator.payloads import FaultRequest, GuardReport, TrainRequest


@dataclass
class StageResult:
    """What one stage produced: the site visited, its logs, and its row of R."""

    stage: int
    site: str | None
    logs: dict[str, Any]
    row: np.ndarray


class Engine:
    """Runs one sequential-learning run over the sites a ``backend`` hosts."""

    def __init__(
        self,
        plan: RunPlan,
        backend: Backend,
        ledger: Ledger,
        progress: RunProgress,
        logs: dict[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.order = plan.order
        self.backend = backend
        self.ledger = ledger
        self.progress = progress
        self.clock = PhaseClock()
        self.calls = SiteCalls(backend, ledger, self.cfg.runtime, progress, logs)
        self.faults = FaultPlan(plan.faults)
        #: per site and start of its process (0, 1, ... restarts), that process's guard counts
        self.guard_sessions: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in self.order}
        self.live = LiveFigures(backend.metrics_sink(), plan.out.name, self.order)
        self.dashboard_url: str | None = None
        self.learner: Any = None
        self.smd = SMDSteps(self, ArtifactCache(plan.reuse) if plan.reuse else None)
        ledger.on_record = self.live.traffic

    def placement(self) -> dict[str, dict[str, Any]]:
        """Where each site and the learner run: node and process."""
        return self.backend.placement()

    def _crash_if_planned(self, site: str, stage: int, phase: str) -> None:
        """An injected fault: the site's process exits in the middle of this call
        (``kill-site``, an operator's operation)."""
        if self.faults.take("kill-site", stage, site):
            msg = FaultRequest(phase).to_record("driver", f"site:{site}")
            self.ledger.record(msg)
            self.ledger.record(self.backend.operator(site, "crash_during", msg).result())

    def check_settings(self) -> None:
        """Every site's own settings are the plan's (a site refuses a weaker request)."""
        for site in self.order:
            msg = self.plan.settings[site].expected().to_record("learner", f"site:{site}")
            self.calls.with_retries(
                site, "settings check", lambda a, s=site, m=msg: self.calls.call(s, "check", m, a)
            )

    def describe_sites(self) -> dict[str, dict[str, float]]:
        pending = {s: self.calls.send(s, "describe") for s in self.order}
        out = {}
        for s in self.order:

            def work(attempt: int, s: str = s) -> dict[str, float]:
                p = pending[s] if not attempt else self.calls.send(s, "describe", retry=attempt)
                return metrics(self.calls.receive(s, "describe", p, attempt))

            out[s] = self.calls.with_retries(s, "describe", work)
        return out

    def start_learner(self, in_channels: int) -> None:
        trace = self.plan.trace_dir / "learner.jsonl" if self.plan.trace_dir else None
        self.learner = self.backend.start_learner(
            self.cfg,
            self.plan.method,
            self.plan.hparams,
            in_channels,
            str(trace) if trace else None,
            str(self.plan.data_root),
        )

    def evaluate_all(self, stage: int = 0) -> np.ndarray:
        """Dice of the learner's current weights on every site, evaluated in parallel."""
        msg = self.learner.call("evaluate_message")
        for site in self.order:  # (the visited site's fault, if any, fired during its visit)
            self._crash_if_planned(site, stage, "evaluation")
        for site in self.order:
            self.ledger.record(msg, dst=f"site:{site}")
        pending = self.backend.broadcast("evaluate", msg, self.order)
        row = []
        for site in self.order:

            def work(attempt: int, site: str = site) -> float:
                p = (
                    pending[site]
                    if not attempt
                    else self.calls.send(site, "evaluate", msg, attempt)
                )
                return metrics(self.calls.receive(site, "evaluate", p, attempt))["dice"]

            row.append(self.calls.with_retries(site, "evaluation", work))
        return np.array(row)

    def visit(self, stage: int, site: str) -> dict[str, Any]:
        """One visit: the learner's message, local training in chunks (for progress) where the
        site's process lives across calls, the model back.

        If the site's process dies, the whole visit is repeated from the learner's message, which
        the learner builds again from the same weights and seeds.
        """
        steps = self.cfg.train.steps_per_stage
        self._crash_if_planned(site, stage, "visit")
        T = len(self.order)

        def work(attempt: int) -> RecordDict:
            msg = self.learner.call("visit_message", site, stage)
            if not self.backend.persistent_sites:  # one message: a node may start a process each
                self.progress.line(f"stage {stage}/{T} site {site}: visit of {steps} steps")
                reply = self.calls.call(site, "visit", msg, retry=attempt)
                self.progress.trained(steps, steps)
                return reply
            self.calls.call(site, "start_visit", msg, retry=attempt)
            done = 0
            while done < steps:
                chunk = min(self.cfg.train.progress_every, steps - done)
                req = TrainRequest(chunk).to_record("learner", f"site:{site}")
                logs = metrics(self.calls.call(site, "train", req, retry=attempt))
                done = int(logs["step"])
                loss = logs.get("loss", float("nan"))
                self.live.step(site, done, loss, logs["seconds"] / max(chunk, 1))
                if not attempt:
                    self.progress.trained(chunk, steps)
                self.progress.line(
                    f"stage {stage}/{T} site {site} step {done}/{steps} loss {loss:.3f}"
                )
            return self.calls.call(site, "finish_visit", retry=attempt)

        reply = self.calls.with_retries(site, "visit", work)
        return self.learner.call("absorb", reply, site, stage)

    def run(
        self, on_stage: Callable[[StageResult], None], start: int = 0, R: np.ndarray | None = None
    ) -> np.ndarray:
        """The sequential loop from stage ``start`` (0: the untrained model's evaluation first);
        ``R`` holds the rows of the stages before ``start``. ``on_stage`` receives each stage's
        result as it completes (and may checkpoint it)."""
        T = len(self.order)
        R = np.zeros((T + 1, T)) if R is None else R
        self.clock.end_stage()  # what came before the loop is not this stage's
        if start == 0:
            t0 = time.perf_counter()
            with self.clock.phase("evaluation"):
                R[0] = self.evaluate_all(0)
            self.progress.evaluated()
            logs = {"eval_seconds": time.perf_counter() - t0, "phases": self.clock.end_stage()}
            on_stage(StageResult(0, None, logs, R[0]))
        prompt_only = self.cfg.privacy.exports == "prompt"
        for stage in range(max(start, 1), T + 1):
            site = self.order[stage - 1]
            t_stage = time.perf_counter()
            if (
                prompt_only
            ):  # the site exports its prompt; the learner trains on its synthetic images
                smd_logs = self.smd.stage(stage, site)
                with self.clock.phase("training"):
                    self.progress.line(
                        f"stage {stage}/{T} site {site}: training on its synthetic images"
                    )
                    logs = self.learner.call("train_locally", site, stage)
                self.progress.trained(1, 1)
            else:
                with self.clock.phase("training"):
                    logs = self.visit(stage, site)
                smd_logs = self.smd.stage(stage, site) if self.smd.on else {}
            logs.update({f"smd_{k}": v for k, v in smd_logs.items()})
            t_eval = time.perf_counter()
            with self.clock.phase("evaluation"):
                R[stage] = self.evaluate_all(stage)
            self.progress.evaluated()
            logs.update(
                eval_seconds=time.perf_counter() - t_eval,
                stage_seconds=time.perf_counter() - t_stage,
                phases=self.clock.end_stage(),
            )
            self.live.stage(stage, R[stage])
            on_stage(StageResult(stage, site, logs, R[stage]))
        return R

    # -- checkpoints ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What the run carries from one stage to the next, for a checkpoint (the learner's
        weights, method state, prompts and replay; per-site figures). Each site keeps its guard's
        counts in its own folder for the run, so a resumed run's final report holds them all."""
        self.smd.collect_preloads()
        return {
            "learner": self.learner.call("snapshot"),
            **self.smd.snapshot(),
            "reuse_folder": str(self.plan.reuse) if self.plan.reuse else "",
            "guard_sessions": self.guard_sessions,
            "restarts": self.calls.restarts,
            "phases": dict(self.clock.total),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot` (after :meth:`start_learner` and SMD's set-up)."""
        self.learner.call("restore", snap["learner"])
        self.smd.restore(snap)
        self.guard_sessions = {s: dict(v) for s, v in snap["guard_sessions"].items()}
        self.calls.restarts = dict(snap["restarts"])
        for phase, sec in snap["phases"].items():
            self.clock.total[phase] += sec

    def final_weights(self) -> dict[str, np.ndarray]:
        return self.learner.call("weights_checkpoint")

    def refresh_guard_reports(self) -> None:
        """Ask every site for its guard's counts; each start of a site's process keeps its own."""
        self.smd.collect_preloads()
        for site in self.order:

            def work(attempt: int, site: str = site) -> GuardReport:
                return GuardReport.from_record(self.calls.call(site, "guard_report", retry=attempt))

            rep = self.calls.with_retries(site, "guard report", work)
            start = str(self.calls.restarts[site])
            self.guard_sessions[site][start] = {**rep.counts, "mode": rep.mode}

    def guard_reports(self) -> dict[str, dict[str, Any]]:
        """Each site's guard counts at the end of the run (a site keeps them over the starts of
        its process, in its own folder)."""
        self.refresh_guard_reports()
        return {
            site: merge_guard_sessions(list(sessions.values()), self.calls.restarts[site])
            for site, sessions in self.guard_sessions.items()
        }

    def shutdown(self) -> None:
        self.live.close()
        self.backend.shutdown()


__all__ = ["Engine", "SiteDied", "StageResult"]
