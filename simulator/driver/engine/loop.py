"""The stage loop: one run's site actors and learner, every message between them, and recovery.

It creates one named actor per site and one learner actor, routes every message between them,
writes each crossing to the ledger, and drives the sequential loop: evaluate the untrained model
everywhere, then per stage visit one site, tune its prompt (with SMD replay), and evaluate every
site. A site whose process dies is restarted by Ray and the interrupted work is repeated from the
stage's inputs; a site that does not answer in time fails the run, which can then be resumed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from flwr.app import RecordDict

from server.learner import Learner
from simulator.driver.artifacts import ArtifactCache, artifact_key
from simulator.driver.engine.calls import SiteCalls
from simulator.driver.engine.live import LiveFigures
from simulator.driver.engine.runtime import (
    Actors,
    actor_placement,
    create_sites,
    get,
)
from simulator.driver.engine.smd_steps import SMDSteps
from simulator.driver.faults import FaultPlan
from simulator.driver.ledger import Ledger
from simulator.driver.phases import PhaseClock
from simulator.driver.plan import RunPlan
from simulator.driver.progress import RunProgress
from simulator.driver.results import merge_guard_sessions
from simulator.messages import metrics
from simulator.payloads import GuardReport
from sites.site import Site


@dataclass
class StageResult:
    """What one stage produced: the site visited, its logs, and its row of R."""

    stage: int
    site: str | None
    logs: dict[str, Any]
    row: np.ndarray


class Engine(SMDSteps):
    """Runs one sequential-learning run over site actors."""

    def __init__(
        self,
        plan: RunPlan,
        ledger: Ledger,
        progress: RunProgress,
        namespace: str,
        trace_dir: str | None = None,
        site_cls: type = Site,
        grid: Any = None,
    ) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.order = plan.order
        self.ledger = ledger
        self.progress = progress
        self.trace_dir = trace_dir
        #: the Flower grid when the engine runs inside a ServerApp (sites are Flower nodes), else
        #: None
        self.grid = grid
        if grid is None:
            specs = {n: plan.specs[n] for n in self.order}
            self.actors = create_sites(
                self.cfg, specs, namespace, trace_dir, plan.guard_mode, site_cls, plan.pins
            )
        else:
            self.actors = self._connect_flower_sites(grid)
        self.namespace = namespace
        self.smd_on = False
        #: per site: prompt-tuning logs and the replay's fidelity and memorisation statistics
        self.smd_sites: dict[str, dict[str, float]] = {}
        self.clock = PhaseClock()
        self.cache = ArtifactCache(plan.reuse) if plan.reuse else None
        #: per site whose prompt and figures came from the cache: its key and the run that made them
        self.reused: dict[str, dict[str, str]] = {}
        self.backbone_key = ""
        self.faults = FaultPlan(plan.faults)
        self.calls = SiteCalls(self.actors, ledger, self.cfg.runtime, progress)
        #: per site and start of its process, the latest guard report of that process
        self.guard_sessions: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in self.order}
        self.live = LiveFigures(plan.out.name, self.order)
        self.dashboard_url: str | None = None
        #: per site, its answer to preload_smd while it is still on its way
        self._preloads: dict[str, Any] = {}
        ledger.on_record = self.live.traffic

    def _connect_flower_sites(self, grid: Any) -> Actors:
        from simulator.driver.engine.flower import connect_sites

        specs = self.plan.specs
        by_partition = sorted(self.order, key=lambda n: specs[n].site_index)
        rt = self.cfg.runtime
        setup = {
            "torch_threads": rt.torch_threads,
            "device": rt.device,
            "privacy_mode": self.plan.guard_mode,
        }
        return Actors(
            connect_sites(
                grid,
                self.order,
                by_partition,
                specs,
                setup,
                self.trace_dir,
                self.ledger,
                rt.site_timeout,
            )
        )

    def placement(self) -> dict[str, dict[str, Any]]:
        """Where each actor runs: node id, node address and process id."""
        get(self.actors.learner.replay_stats.remote())  # the learner's process is up, its pid known
        if self.grid is not None:
            from simulator.driver.engine.flower import placement

            return {
                **placement(self.actors.sites),
                **actor_placement({"learner": self.actors.learner}),
            }
        return actor_placement(
            {
                **{f"site-{n}": h for n, h in self.actors.sites.items()},
                "learner": self.actors.learner,
            }
        )

    def _crash_if_planned(self, site: str, stage: int, phase: str) -> None:
        """An injected fault: the site's process exits in the middle of this call
        (``kill-site``)."""
        if self.faults.take("kill-site", stage, site):
            self.calls.call(site, "crash_during", None, phase)

    def describe_sites(self) -> dict[str, dict[str, float]]:
        refs = {s: h.describe.remote() for s, h in self.actors.sites.items()}
        out = {}
        for s, ref in refs.items():

            def work(attempt: int, s: str = s, ref: Any = ref) -> dict[str, float]:
                if attempt:
                    return metrics(self.calls.call(s, "describe", retry=attempt))
                reply = self.calls.wait(ref, s, "describe")
                self.ledger.record(reply)
                return metrics(reply)

            out[s] = self.calls.with_retries(s, "describe", work)
        return out

    def start_learner(self, in_channels: int) -> None:
        self.actors.learner = (
            ray.remote(Learner)
            .options(
                name="learner",
                namespace=self.namespace,
                num_cpus=0,
                max_restarts=0,
            )
            .remote(
                self.cfg,
                self.plan.method,
                self.plan.hparams,
                in_channels,
                str(Path(self.trace_dir) / "learner.jsonl") if self.trace_dir else None,
                str(self.plan.data_root),
            )
        )

    def preload_smd(self, backbone_key: str, done: frozenset[str] = frozenset()) -> None:
        """Ask the learner and every site that will tune a prompt to import the backbone's libraries
        now (several seconds of CPU per process), all at once, rather than one after another when
        each prompt is due. Sites whose prompt is done (``done``) or in the grid's artifact cache
        are not asked. The answers are collected, and recorded, later (:meth:`collect_preload`)."""
        if self.grid is not None:  # a deployed node answers each message in a new process
            return
        self.actors.learner.preload_smd.remote()  # its next call (enable_replay) runs after it
        for site in self.order:
            if site in done:
                continue
            if self.cache is not None:
                key = artifact_key(self.cfg, self.plan.specs[site], backbone_key)
                if self.cache.load(key) is not None:
                    continue
            self._preloads[site] = self.actors.sites[site].preload_smd.remote()

    def collect_preload(self, site: str) -> None:
        """Record the site's answer to preload_smd, if it was asked (waits for it)."""
        ref = self._preloads.pop(site, None)
        if ref is None:
            return
        try:
            self.ledger.record(self.calls.wait(ref, site, "preload"))
        except ray.exceptions.RayActorError:
            pass  # the process died since; the work that follows restarts it and repeats itself

    def enable_replay(self, backbone_path: str, channels: int) -> None:
        get(self.actors.learner.enable_replay.remote(backbone_path, channels))
        self.smd_on = True
        self.backbone_key = Path(
            backbone_path
        ).parent.name  # the cache folder is named by the spec hash

    def evaluate_all(self, stage: int = 0) -> np.ndarray:
        """Dice of the learner's current weights on every site, evaluated in parallel."""
        msg = get(self.actors.learner.evaluate_message.remote())
        ref = ray.put(msg) if self.grid is None else msg  # (a Flower message carries its own copy)
        for site in self.order:  # (the visited site's fault, if any, fired during its visit)
            self._crash_if_planned(site, stage, "evaluation")
        refs = {}
        for site in self.order:
            self.ledger.record(msg, dst=f"site:{site}")
            refs[site] = self.actors.sites[site].evaluate.remote(ref)
        row = []
        for site in self.order:

            def work(attempt: int, site: str = site) -> float:
                if attempt:
                    self.ledger.record(msg, dst=f"site:{site}", retry=attempt)
                r = self.actors.sites[site].evaluate.remote(ref) if attempt else refs[site]
                reply = self.calls.wait(r, site, "evaluation")
                self.ledger.record(reply, retry=attempt)
                return metrics(reply)["dice"]

            row.append(self.calls.with_retries(site, "evaluation", work))
        return np.array(row)

    def visit(self, stage: int, site: str) -> dict[str, Any]:
        """One visit: the learner's message, local training in chunks (for progress), the model
        back.

        If the site's process dies, the whole visit is repeated from the learner's message, which
        the learner builds again from the same weights and seeds.
        """
        steps = self.cfg.train.steps_per_stage
        self._crash_if_planned(site, stage, "visit")
        if (
            self.grid is not None
        ):  # one message: a deployed node answers each message in a new process
            msg = get(self.actors.learner.visit_message.remote(site, stage))
            self.progress.line(
                f"stage {stage}/{len(self.order)} site {site}: visit of {steps} steps on its node"
            )
            reply = self.calls.call(site, "visit", msg, phase="visit")
            self.progress.trained(steps, steps)
            return get(self.actors.learner.absorb.remote(reply, site, stage))

        def work(attempt: int) -> RecordDict:
            msg = get(self.actors.learner.visit_message.remote(site, stage))
            self.calls.call(site, "start_visit", msg, retry=attempt, phase="visit")
            done = 0
            while done < steps:
                chunk = min(self.cfg.train.progress_every, steps - done)
                logs = metrics(
                    self.calls.call(site, "train", None, chunk, retry=attempt, phase="visit")
                )
                done = int(logs["step"])
                loss = logs.get("loss", float("nan"))
                self.live.step(site, done, loss, logs["seconds"] / max(chunk, 1))
                if not attempt:
                    self.progress.trained(chunk, steps)
                self.progress.line(
                    f"stage {stage}/{len(self.order)} site {site} step {done}/{steps} "
                    f"loss {logs.get('loss', float('nan')):.3f}"
                )
            return self.calls.call(site, "finish_visit", retry=attempt, phase="visit")

        reply = self.calls.with_retries(site, "visit", work)
        return get(self.actors.learner.absorb.remote(reply, site, stage))

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
            on_stage(
                StageResult(
                    0,
                    None,
                    {"eval_seconds": time.perf_counter() - t0, "phases": self.clock.end_stage()},
                    R[0],
                )
            )
        prompt_only = self.cfg.privacy.exports == "prompt"
        for stage in range(max(start, 1), T + 1):
            site = self.order[stage - 1]
            t_stage = time.perf_counter()
            if (
                prompt_only
            ):  # the site exports its prompt first; the learner trains on its synthetic images
                smd_logs = self._smd_stage(stage, site)
                with self.clock.phase("training"):
                    self.progress.line(
                        f"stage {stage}/{T} site {site}: the learner trains on synthetic images"
                    )
                    logs = get(self.actors.learner.train_locally.remote(site, stage))
                self.progress.trained(1, 1)
            else:
                with self.clock.phase("training"):
                    logs = self.visit(stage, site)
                smd_logs = self._smd_stage(stage, site) if self.smd_on else {}
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
        weights, method state, prompts and replay; per-site figures; each site's guard report)."""
        self.refresh_guard_reports()
        return {
            "learner": get(self.actors.learner.snapshot.remote()),
            "smd_sites": self.smd_sites,
            "reuse_folder": str(self.plan.reuse) if self.plan.reuse else "",
            "reused": self.reused,
            "guard_sessions": self.guard_sessions,
            "restarts": self.calls.restarts,
            "phases": dict(self.clock.total),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot` (after :meth:`start_learner` and
        :meth:`enable_replay`)."""
        get(self.actors.learner.restore.remote(snap["learner"]))
        self.smd_sites = dict(snap["smd_sites"])
        self.reused = dict(snap["reused"])
        self.guard_sessions = {s: dict(v) for s, v in snap["guard_sessions"].items()}
        self.calls.restarts = dict(snap["restarts"])
        for phase, sec in snap["phases"].items():
            self.clock.total[phase] += sec

    def final_weights(self) -> dict[str, np.ndarray]:
        return get(self.actors.learner.weights_checkpoint.remote())

    def refresh_guard_reports(self) -> None:
        """Ask every site for its guard's report; each start of a site's process keeps its own."""
        for site in list(self._preloads):
            self.collect_preload(site)
        for site in self.order:

            def work(attempt: int, site: str = site) -> GuardReport:
                return GuardReport.from_record(self.calls.call(site, "guard_report", retry=attempt))

            rep = self.calls.with_retries(site, "guard report", work)
            self.guard_sessions[site][str(rep.session)] = {
                **rep.counts,
                "mode": rep.mode,
                "site": rep.site,
                "violation_list": [dict(v) for v in rep.violations],
            }

    def guard_reports(self) -> dict[str, dict[str, Any]]:
        """Each site's guard report: counts, seconds and every violation, summed over the starts of
        its process (a process killed between two reports loses what it counted since the last)."""
        self.refresh_guard_reports()
        return {
            site: merge_guard_sessions(list(sessions.values()), self.calls.restarts[site])
            for site, sessions in self.guard_sessions.items()
        }

    def shutdown(self) -> None:
        self.live.close()
        self.actors.kill()
