"""A hospital site: private data, local training, local evaluation.

``Site`` is a plain class; the engine wraps it as a Ray actor (one process per
site), and the same class can serve a Flower ``ClientApp``. Its data is built
inside the instance from a spec, and every public method returns a Flower
``RecordDict`` that has passed the egress guard: model weights after a visit,
or scalar metrics. No public method returns pixels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from simulator.devices import resolve_device
from simulator.filetrace import start_trace
from simulator.messages import arrays, config, expect, make_message
from simulator.method import Batch, Method, StageContext
from simulator.segmentation import UNet, dice_per_image, predict
from sites.blocklist import Blocklist
from sites.datasets import build_site_data
from sites.egress import EgressGuard

MethodFactory = Callable[[str, torch.nn.Module, dict[str, Any]], Method]


def model_from_message(msg: RecordDict, device: torch.device) -> UNet:
    """Rebuild the segmentation network described and weighted by a message."""
    cfg = config(msg)
    model = UNet(int(cfg["in_channels"]), int(cfg["width"]), int(cfg["depth"]))
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays(msg, "weights").items()}
    model.load_state_dict(state)
    return model.to(device)


@dataclass
class _Visit:
    model: UNet
    method: Method
    ctx: StageContext
    replay: dict[str, tuple[torch.Tensor, torch.Tensor]]
    batch_size: int
    step: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0


class Site:
    """One hospital site holding its private train/test split."""

    def __init__(self, name: str, spec: dict[str, Any], method_factory: MethodFactory,
                 torch_threads: int = 1, device: str = "auto", privacy_mode: str = "strict",
                 trace_file: str | None = None) -> None:
        torch.set_num_threads(max(1, int(torch_threads)))
        if trace_file and spec.get("data_dir"):
            start_trace(trace_file, f"site:{name}", [Path(spec["data_dir"]).parent])
        self.name = name
        self.device = resolve_device(device)
        self._data = build_site_data(spec)
        self._method_factory = method_factory
        d = self._data
        t0 = time.perf_counter()
        blocklist = Blocklist({"train_image": d.train_x, "train_mask": d.train_y,
                               "test_image": d.test_x, "test_mask": d.test_y})
        self._guard = EgressGuard(name, blocklist, mode=privacy_mode)
        self._guard.build_seconds = time.perf_counter() - t0
        self._visit: _Visit | None = None
        self._backbone_path: str | None = None  # the public SMD backbone, once sent
        self._backbone_model = None
        self._prompt: np.ndarray | None = None  # this site's own tuned prompt
        self._train_x = torch.from_numpy(self._data.train_x).to(self.device)
        self._train_y = torch.from_numpy(self._data.train_y.astype(np.float32)).to(self.device)
        self._test_x = torch.from_numpy(self._data.test_x).to(self.device)
        self._test_y = torch.from_numpy(self._data.test_y.astype(np.float32)).to(self.device)

    # -- what leaves goes through here -------------------------------------------------
    def _send(self, kind: str, metrics: dict | None = None, array_groups: dict | None = None,
              config_values: dict | None = None) -> RecordDict:
        rd = make_message(kind, src=f"site:{self.name}", dst="learner", arrays=array_groups,
                          metrics=metrics, config=config_values)
        return self._guard.check(rd)

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
            "data_bytes": int(d.train_x.nbytes + d.train_y.nbytes + d.test_x.nbytes + d.test_y.nbytes),
        }
        stats.update({f"acq_{k}": v for k, v in d.description.items()})
        return self._send("metrics", metrics=stats)

    # -- a visit: start, train in chunks (for progress), finish ---------------------------
    def start_visit(self, msg: RecordDict) -> RecordDict:
        """Receive the learner's weights, method and replay; prepare local training."""
        expect(msg, "visit")
        cfg = config(msg)
        model = model_from_message(msg, self.device)
        hparams = json.loads(cfg["hparams"])
        method = self._method_factory(str(cfg["method"]), model, hparams)
        method.load_state(arrays(msg, "state"))
        replay_raw = arrays(msg, "replay")
        replay = {}
        for key in replay_raw:
            if key.endswith("/x"):
                site = key[:-2]
                x = torch.from_numpy(replay_raw[key].copy()).float().to(self.device)
                y = torch.from_numpy(replay_raw[f"{site}/y"].copy()).float().to(self.device)
                replay[site] = (x, y)
        gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
        ctx = StageContext(site=self.name, stage=int(cfg["stage"]), steps=int(cfg["steps"]),
                           device=self.device, generator=gen, replay_sites=sorted(replay))
        method.begin_stage(ctx)
        self._visit = _Visit(model, method, ctx, replay, int(cfg["batch_size"]))
        return self._send("metrics", metrics={"steps": ctx.steps, "replay_sites": len(replay)})

    def _batch(self, v: _Visit) -> Batch:
        n = len(self._train_x)
        idx = torch.randint(n, (min(v.batch_size, n),), generator=v.ctx.generator)
        replay = {}
        # the replay batch is shared out over the earlier sites, so a step costs about two batches
        per_site = -(-v.batch_size // max(len(v.replay), 1))
        for site, (x, y) in v.replay.items():
            ridx = torch.randint(len(x), (min(per_site, len(x)),), generator=v.ctx.generator)
            replay[site] = (x[ridx], y[ridx])
        return Batch(self._train_x[idx], self._train_y[idx], replay)

    def train(self, n_steps: int) -> RecordDict:
        """Run up to ``n_steps`` outer steps of the current visit; returns scalar logs."""
        v = self._require_visit()
        n = min(int(n_steps), v.ctx.steps - v.step)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(n):
            logs = v.method.update(self._batch(v))
            for k, val in logs.items():
                sums[k] = sums.get(k, 0.0) + float(val)
            v.step += 1
        dt = time.perf_counter() - t0
        v.seconds += dt
        v.loss_sum += sums.get("loss", 0.0)
        means = {k: s / max(n, 1) for k, s in sums.items()}
        return self._send("metrics", metrics={"step": v.step, "steps": v.ctx.steps, "seconds": dt, **means})

    def finish_visit(self) -> RecordDict:
        """End the visit; export the trained weights and the method's state (kind ``model``)."""
        v = self._require_visit()
        v.method.end_stage()
        weights = {k: t.detach().cpu().numpy() for k, t in v.model.state_dict().items()}
        state = v.method.export_state()
        self._visit = None
        return self._send(
            "model",
            metrics={"steps": v.step, "train_seconds": v.seconds, "mean_loss": v.loss_sum / max(v.step, 1)},
            array_groups={"weights": weights, "state": state},
        )

    def visit(self, msg: RecordDict) -> RecordDict:
        """A whole visit in one call (the form a Flower ClientApp uses)."""
        self.start_visit(msg)
        self.train(self._require_visit().ctx.steps)
        return self.finish_visit()

    def _require_visit(self) -> _Visit:
        if self._visit is None:
            raise RuntimeError(f"site {self.name!r}: no visit in progress; call start_visit first")
        return self._visit

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, msg: RecordDict) -> RecordDict:
        """Dice of the given weights on this site's test split (only scalars leave)."""
        expect(msg, "evaluate")
        cfg = config(msg)
        model = model_from_message(msg, self.device)
        pred = predict(model, self._test_x, int(cfg.get("eval_batch_size", 64)))
        dice = dice_per_image(pred, self._test_y).cpu().numpy()
        return self._send("metrics", metrics={"dice": float(dice.mean()), "dice_std": float(dice.std()),
                                              "n": len(dice)})

    def write_preview(self, folder: str, n: int = 3) -> RecordDict:
        """Save ``n`` train images with mask outlines as one PNG on this site's own disk.

        The file stays where the site runs; only its path length and size leave.
        """
        import cv2

        path = Path(folder) / f"{self.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tiles = []
        for i in range(min(n, len(self._data.train_x))):
            img = (np.clip(self._data.train_x[i, 0], 0, 1) * 255).astype(np.uint8)
            img = cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR)
            rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            mask = cv2.resize(self._data.train_y[i, 0], (128, 128), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(rgb, contours, -1, (0, 0, 255), 1)
            tiles.append(rgb)
        cv2.putText(tiles[0], self.name, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
        if not cv2.imwrite(str(path), np.concatenate(tiles, axis=0)):
            raise OSError(f"site {self.name!r}: could not write {path}")
        return self._send("metrics", metrics={"bytes_written": path.stat().st_size})

    # -- Site-Modulated Diffusion: prompt tuning and replay checks -----------------------
    def _backbone(self, path: str):
        from simulator.smd.cache import load_backbone

        if self._backbone_path != path:
            self._backbone_model = load_backbone(Path(path), self.device)
            self._backbone_path = path
        return self._backbone_model

    def tune_prompt(self, msg: RecordDict) -> RecordDict:
        """Invert this site's train pairs into a K x D prompt of the frozen public backbone."""
        from sites.prompt import tune_prompt

        expect(msg, "tune")
        cfg = config(msg)
        backbone = self._backbone(str(cfg["backbone_path"]))
        prompt, logs = tune_prompt(backbone, self._data.train_x, self._data.train_y, int(cfg["steps"]),
                                   float(cfg["lr"]), int(cfg["batch"]),
                                   torch.Generator().manual_seed(int(cfg["seed"])))
        self._prompt = prompt
        logs["data_bytes"] = int(self._data.train_x.nbytes + self._data.train_y.nbytes)
        return self._send("prompt", metrics=logs, array_groups={"prompt": {"tokens": prompt}})

    def fidelity(self, msg: RecordDict) -> RecordDict:
        """Fidelity (TSTR, intensity distance) and memorisation of this site's replay; scalars leave."""
        from sites.fidelity import intensity_distance, tstr
        from sites.memorisation import membership_inference, nearest_neighbours

        expect(msg, "fidelity")
        cfg = config(msg)
        rep = arrays(msg, "replay")
        synth = (rep[f"{self.name}/x"], rep[f"{self.name}/y"])
        d = self._data
        out = tstr((d.train_x, d.train_y), (d.test_x, d.test_y), synth, int(cfg["steps"]), int(cfg["seed"]))
        out.update(intensity_distance(d.train_x, synth[0]))
        out["synthetic_foreground"] = float(synth[1].mean())
        out["real_foreground"] = float(d.train_y.mean())
        out.update(nearest_neighbours(synth[0], d.train_x, float(cfg.get("nn_threshold", 0.02))))
        if self._prompt is not None and self._backbone_model is not None:
            out.update(membership_inference(self._backbone_model, self._prompt, (d.train_x, d.train_y),
                                            (d.test_x, d.test_y), seed=int(cfg["seed"])))
        return self._send("metrics", metrics=out)

    def attribute(self, msg: RecordDict) -> RecordDict:
        """Score synthetic images with a real-vs-public detector trained on this site's data."""
        from sites.attribution import train_detector_and_score

        expect(msg, "attribute")
        cfg = config(msg)
        queries = arrays(msg, "queries")["x"]
        public = arrays(msg, "public")["x"]
        scores = train_detector_and_score(self._data.train_x, public, queries, int(cfg["steps"]),
                                          int(cfg["seed"]))
        return self._send("metrics", metrics={"n_scored": len(scores)},
                          array_groups={"scores": {"score": scores}})

    def guard_report(self) -> RecordDict:
        """What the egress guard checked and every violation it recorded (one short entry each)."""
        rep = self._guard.report()
        viol = rep.pop("violations")
        cfg = {"mode": rep.pop("mode"), "site": rep.pop("site")}
        cfg.update({f"v{i}": json.dumps(v) for i, v in enumerate(viol[:200])})
        return self._send("metrics", metrics={**rep, "violations": len(viol)}, config_values=cfg)
