"""A hospital site: private data, local training, local evaluation.

``Site`` is a plain class; the engine wraps it as a Ray actor (one process per
site), and the same class can serve a Flower ``ClientApp``. Its data is built
inside the instance from a spec, and every public method returns a Flower
``RecordDict`` that has passed the egress guard: model weights after a visit,
or scalar metrics. No public method returns pixels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from simulator import schemas
from simulator.benchmarks.catalog import USER_LAYOUTS
from simulator.devices import resolve_device
from simulator.errors import ConfigError
from simulator.filetrace import record as record_access
from simulator.filetrace import start_trace
from simulator.messages import EGRESS_KINDS
from simulator.method import Method
from simulator.outlines import encode_png, label, outlined_tile
from simulator.payloads import (
    EvaluateRequest,
    GuardReport,
    MetricsReply,
    ModelReply,
    Payload,
    PreviewRequest,
    SiteSpec,
    VisitRequest,
)
from simulator.schemas import MetricRule, Schema
from simulator.segmentation import dice_per_image, predict
from simulator.visit import LocalVisit, build_unet
from sites.blocklist import Blocklist, WindowIndex
from sites.datasets import SiteData, build_site_data
from sites.egress import MODES, EgressGuard
from sites.smd_ops import SiteSMD

MethodFactory = Callable[[str, torch.nn.Module, Mapping[str, Any]], Method]


class Site:
    """One hospital site holding its private train/test split.

    The data is built from the spec on first use, inside this process; a spec whose data
    cannot be read raises :class:`~simulator.errors.DataError` from that first call.
    """

    def __init__(
        self,
        name: str,
        spec: SiteSpec,
        method_factory: MethodFactory,
        torch_threads: int = 1,
        device: str = "auto",
        privacy_mode: str = "strict",
        trace_file: str | None = None,
    ) -> None:
        self._threads = max(1, int(torch_threads))
        torch.set_num_threads(self._threads)
        if trace_file and spec.data_dir:
            start_trace(trace_file, f"site:{name}", [Path(spec.data_dir).parent])
        self.name = name
        self.spec = spec
        self.device = resolve_device(device)
        self._method_factory = method_factory
        self._privacy_mode = privacy_mode
        self._visit: LocalVisit | None = None
        self.smd = SiteSMD(self)
        self._session = time.time_ns() // 1000  # this start of the site's process (microseconds)
        self._crash_in: str | None = None  # an injected fault: die in the middle of this phase

    @contextmanager
    def _parallel_phase(self) -> Iterator[None]:
        """One torch thread while every site computes at once (evaluation, attribution).

        Several actors each running a multi-threaded kernel on two cores spend their time
        waiting on each other's threads; one thread each keeps every core busy with work.
        """
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    # -- private data, built on first use ------------------------------------------------
    @cached_property
    def _data(self) -> SiteData:
        return build_site_data(self.spec)

    @cached_property
    def _guard(self) -> EgressGuard:
        d = self._data
        t0 = time.perf_counter()
        blocklist = Blocklist(
            {
                "train_image": d.train_x,
                "train_mask": d.train_y,
                "test_image": d.test_x,
                "test_mask": d.test_y,
            }
        )
        windows = WindowIndex(
            {
                "train_image": d.train_x,
                "train_mask": d.train_y,
                "test_image": d.test_x,
                "test_mask": d.test_y,
            }
        )
        guard = EgressGuard(self.name, blocklist, mode=self._privacy_mode, windows=windows)
        guard.build_seconds = time.perf_counter() - t0
        return guard

    @cached_property
    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d, dev = self._data, self.device
        return (
            torch.from_numpy(d.train_x).to(dev),
            torch.from_numpy(d.train_y.astype(np.float32)).to(dev),
            torch.from_numpy(d.test_x).to(dev),
            torch.from_numpy(d.test_y.astype(np.float32)).to(dev),
        )

    # -- what leaves goes through here -------------------------------------------------
    def _schema(
        self,
        kind: str = "metrics",
        metrics: Mapping[str, MetricRule] | None = None,
        arrays: Mapping[str, tuple[tuple[int | None, ...], str]] | None = None,
        config: Mapping[str, Any] | None = None,
        records: Mapping[str, Mapping[str, Any]] | None = None,
        dst: str = "learner",
        groups: tuple[str, ...] = (),
    ) -> Schema:
        """The declared shape of one message this site is about to send."""
        return Schema(
            kind,
            f"site:{self.name}",
            (dst,),
            arrays or {},
            metrics or {},
            config or {},
            records or {},
            groups,
        )

    def _send(self, payload: Payload, schema: Schema) -> RecordDict:
        return self._emit(payload.to_record(src=schema.src, dst=schema.dsts[0]), schema)

    def _emit(self, rd: RecordDict, schema: Schema) -> RecordDict:
        """The last step of every outgoing message: the egress guard, against its declared
        schema."""
        return self._guard.check(rd, schema)

    def _metrics(
        self, declared: Mapping[str, MetricRule], dst: str = "learner", **values: float
    ) -> RecordDict:
        return self._send(MetricsReply(values), self._schema(metrics=declared, dst=dst))

    def describe(self) -> RecordDict:
        """Scalar facts about the site's data (counts, size, foreground fraction)."""
        d = self._data
        stats = {
            "n_train": len(d.train_x),
            "n_test": len(d.test_x),
            "height": d.image_shape[0],
            "width": d.image_shape[1],
            "channels": d.channels,
            "foreground_fraction": float(d.train_y.mean()),
            "intensity_mean": float(d.train_x.mean()),
            "intensity_std": float(d.train_x.std()),
            "data_bytes": int(
                d.train_x.nbytes + d.train_y.nbytes + d.test_x.nbytes + d.test_y.nbytes
            ),
        }
        stats.update({f"acq_{k}": v for k, v in d.description.items()})
        return self._metrics(schemas.DESCRIBE, **stats)

    # -- a visit: start, train in chunks (for progress), finish ---------------------------
    def start_visit(self, msg: RecordDict) -> RecordDict:
        """Receive the learner's weights, method and replay; prepare local training."""
        req = VisitRequest.from_record(msg)
        self._visit = LocalVisit.start(
            req, self.name, self._tensors[:2], self.device, self._method_factory
        )
        return self._metrics(
            schemas.VISIT_START, steps=req.steps, replay_sites=len(self._visit.replay)
        )

    def _crash_point(self, step: int) -> None:
        if self._crash_in == "visit" and step > 0:
            os._exit(70)  # injected fault: the process dies in the middle of its visit

    def train(self, n_steps: int) -> RecordDict:
        """Run up to ``n_steps`` outer steps of the current visit; returns scalar logs."""
        v = self._require_visit()
        means, dt = v.run(n_steps, self._crash_point)
        return self._metrics(
            {**schemas.TRAIN, **v.method.log_names},
            step=v.step,
            steps=v.ctx.steps,
            seconds=dt,
            **means,
        )

    def finish_visit(self) -> RecordDict:
        """End the visit; export the trained weights and the method's state (kind ``model``)."""
        v = self._require_visit()
        if self._crash_in == "visit":
            os._exit(70)  # injected fault (a visit too short to die between its steps)
        weights, state, logs, mean_loss = v.finish()
        self._visit = None
        method = type(v.method)
        arrays = {f"weights/{k}": spec for k, spec in v.received.items()}
        arrays.update(
            {f"state/{k}": spec for k, spec in method.state_spec(v.received).items() if k in state}
        )
        declared = {
            **schemas.MODEL,
            **method.log_names,
            **method.summary_names([self.name, *v.ctx.replay_sites]),
        }
        return self._send(
            ModelReply(
                weights,
                state,
                steps=v.step,
                train_seconds=v.seconds,
                mean_loss=mean_loss,
                logs=logs,
            ),
            self._schema("model", declared, arrays, groups=("weights", "state")),
        )

    def visit(self, msg: RecordDict) -> RecordDict:
        """A whole visit in one call (the form a Flower ClientApp uses)."""
        self.start_visit(msg)
        self.train(self._require_visit().ctx.steps)
        return self.finish_visit()

    def _require_visit(self) -> LocalVisit:
        if self._visit is None:
            raise RuntimeError(f"site {self.name!r}: no visit in progress; call start_visit first")
        return self._visit

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, msg: RecordDict) -> RecordDict:
        """Dice of the given weights on this site's test split (only scalars leave)."""
        req = EvaluateRequest.from_record(msg)
        if self._crash_in == "evaluation":
            os._exit(70)  # injected fault: the process dies in the middle of its evaluation
        model = build_unet(req.arch, req.weights, self.device)
        test_x, test_y = self._tensors[2:]
        with self._parallel_phase():
            pred = predict(model, test_x, req.eval_batch_size)
        dice = dice_per_image(pred, test_y).cpu().numpy()
        return self._metrics(
            schemas.EVALUATE, dice=float(dice.mean()), dice_std=float(dice.std()), n=len(dice)
        )

    def write_preview(self, msg: RecordDict) -> RecordDict:
        """Save ``n`` train images with mask outlines as one PNG on this site's own disk.

        The file stays where the site runs; only its size leaves. A site with real (user) data
        writes one only if its operator allowed it, and by default inside its own data folder.
        """
        req = PreviewRequest.from_record(msg)
        real = self.spec.benchmark in USER_LAYOUTS
        if real and not req.real:
            raise ConfigError(
                f"site {self.name!r} holds real images: a preview needs --allow-real-previews"
            )
        folder = req.folder or (self.spec.data_dir if real else "")
        if not folder:
            raise ConfigError(f"site {self.name!r}: no folder to write its preview into")
        n = req.n
        path = Path(folder) / f"{self.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self._data
        tiles = [
            outlined_tile(d.train_x[i, 0], d.train_y[i, 0], 128)
            for i in range(min(n, len(d.train_x)))
        ]
        label(tiles[0], self.name)
        path.write_bytes(encode_png(np.concatenate(tiles, axis=0)))
        record_access(path, "preview")  # where real images went, even outside the data folders
        return self._metrics(schemas.PREVIEW, dst="driver", bytes_written=path.stat().st_size)

    # -- Site-Modulated Diffusion: prompt tuning and replay checks (sites.smd_ops) ------------
    def preload_smd(self) -> RecordDict:
        return self.smd.preload()

    def has_backbone(self, msg: RecordDict) -> RecordDict:
        return self.smd.has_backbone(msg)

    def install_backbone(self, msg: RecordDict) -> RecordDict:
        return self.smd.install_backbone(msg)

    def tune_prompt(self, msg: RecordDict) -> RecordDict:
        return self.smd.tune_prompt(msg)

    def fidelity(self, msg: RecordDict) -> RecordDict:
        return self.smd.fidelity(msg)

    def attribute(self, msg: RecordDict) -> RecordDict:
        return self.smd.attribute(msg)

    def guard_report(self) -> RecordDict:
        """What the egress guard checked and every violation it recorded (one short row each)."""
        rep = self._guard.report()
        viol = rep.pop("violations")
        site, mode = rep.pop("site"), rep.pop("mode")
        rows = tuple({k: str(v) for k, v in row.items()} for row in viol[:200])
        columns = {
            "site": (self.name,),
            "kind": (*EGRESS_KINDS, "?"),
            "key": str,
            "rule": schemas.RULES,
            "detail": str,
            "action": schemas.ACTIONS,
        }
        schema = self._schema(
            metrics=schemas.GUARD_COUNTS,
            config={"site": (self.name,), "mode": MODES, "session": int},
            records={"violations": columns},
        )
        return self._send(
            GuardReport(site, mode, self._session, {**rep, "violations": len(viol)}, rows), schema
        )

    def crash_during(self, phase: str) -> RecordDict:
        """Fault injection (``--inject-fault kill-site``): this process exits during its next
        ``phase`` (visit or evaluation), as a crash would; Ray restarts it."""
        if phase not in ("visit", "evaluation"):
            raise ValueError(f"crash_during: phase {phase!r}; expected visit or evaluation")
        self._crash_in = phase
        return self._metrics(schemas.ARMED, armed=1)

    def ping(self) -> RecordDict:
        """A liveness probe (after a restart): the site is up; its data is built if it was not."""
        return self._metrics(schemas.PING, alive=1, data_bytes=int(self._data.train_x.nbytes))
