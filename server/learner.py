"""The central sequential learner: segmentation weights, method state, messages.

``Learner`` is a plain class; the engine runs it as a Ray actor. It owns the
current weights and the algorithm state, prepares the message for each visit
(weights, method, hyper-parameters, replay) and absorbs the site's reply. It
never receives a site's pixels: replies are ``model`` messages that passed the
site's egress guard.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import RecordDict

from server.methods import method_class
from server.replay import ReplayBank
from simulator.devices import resolve_device
from simulator.filetrace import start_trace
from simulator.messages import arrays, expect, make_message, metrics, pack_json
from simulator.seeding import derive_seed
from simulator.segmentation import build_model


class Learner:
    """Holds the model between visits and speaks to sites only through messages."""

    def __init__(self, config: dict[str, Any], in_channels: int, trace_file: str | None = None,
                 data_root: str | None = None) -> None:
        if trace_file and data_root:
            start_trace(trace_file, "learner", [data_root])
        self.cfg = config
        run, model_cfg, train = config["run"], config["model"], config["train"]
        self.method = method_class(run["method"])
        self.run_seed = int(run["seed"])
        self.arch = {"in_channels": in_channels, "width": model_cfg["width"], "depth": model_cfg["depth"]}
        model = build_model(in_channels, model_cfg["width"], model_cfg["depth"],
                            seed=derive_seed(self.run_seed, "model_init"))
        self.weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        self.state: dict[str, np.ndarray] = {}
        self.hparams = {"lr": train["lr"], **(config.get("methods") or {}).get(run["method"], {})}
        self.visits: list[dict[str, Any]] = []
        self.bank: ReplayBank | None = None
        self.visited: list[str] = []

    # -- SMD replay --------------------------------------------------------------------
    def enable_replay(self, backbone_path: str, channels: int) -> None:
        """Load the public backbone; prompts and replay are kept from here on."""
        smd, data = self.cfg["smd"], self.cfg["data"]
        self.backbone_path = backbone_path
        self.bank = ReplayBank(backbone_path, self.run_seed, smd["replay_per_site"], smd["sample_steps"],
                               data["image_size"], channels,
                               device=str(resolve_device(self.cfg["runtime"]["device"])))

    def tune_message(self, site: str) -> RecordDict:
        """Ask a site to tune its prompt against the public backbone."""
        smd = self.cfg["smd"]
        return make_message("tune", src="learner", dst=f"site:{site}",
                            config={"backbone_path": self.backbone_path, "steps": smd["prompt_steps"],
                                    "lr": smd["prompt_lr"], "batch": smd["prompt_batch"],
                                    "seed": derive_seed(self.run_seed, "prompt", site)})

    def absorb_prompt(self, reply: RecordDict, site: str) -> dict[str, float]:
        """Keep a site's exported prompt; its replay is sampled when first needed."""
        expect(reply, "prompt")
        self.bank.add_prompt(site, arrays(reply, "prompt")["tokens"])
        return metrics(reply)

    def fidelity_message(self, site: str) -> RecordDict:
        """Send a site the replay of its own prompt, for TSTR and intensity checks."""
        return make_message("fidelity", src="learner", dst=f"site:{site}",
                            arrays={"replay": self.bank.arrays([site])},
                            config={"steps": self.cfg["smd"]["fidelity_steps"],
                                    "nn_threshold": self.cfg["privacy"]["nn_threshold"],
                                    "seed": derive_seed(self.run_seed, "tstr", site)})

    def attribution_message(self, site: str, sites: list[str], public: np.ndarray) -> RecordDict:
        """Send a site every site's synthetic images and public images, for its detector."""
        queries = np.concatenate([self.bank.replay(s)[0] for s in sites])
        return make_message("attribute", src="learner", dst=f"site:{site}",
                            arrays={"queries": {"x": queries}, "public": {"x": public}},
                            config={"steps": self.cfg["smd"]["detector_steps"],
                                    "seed": derive_seed(self.run_seed, "detector", site)})

    def replay_grid(self, path: str, sites: list[str], n: int = 6) -> None:
        """Save a PNG grid of synthetic samples (rows: sites; mask outline in red)."""
        import cv2

        rows = []
        for site in sites:
            x, y = self.bank.replay(site)
            tiles = []
            for i in range(min(n, len(x))):
                img = cv2.resize((x[i, 0] * 255).astype(np.uint8), (96, 96), interpolation=cv2.INTER_LINEAR)
                rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                m = cv2.resize(y[i, 0], (96, 96), interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(rgb, contours, -1, (0, 0, 255), 1)
                tiles.append(rgb)
            cv2.putText(tiles[0], site, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
            rows.append(np.concatenate(tiles, axis=1))
        cv2.imwrite(path, np.concatenate(rows, axis=0))

    def replay_stats(self) -> dict[str, float]:
        if self.bank is None:
            return {}
        return {"sampled_pairs": self.bank.sampled_pairs, "sample_seconds": self.bank.sample_seconds}

    def n_parameters(self) -> int:
        return int(sum(v.size for v in self.weights.values()))

    def visit_message(self, site: str, stage: int) -> RecordDict:
        """The message that starts a visit of ``site`` at ``stage``."""
        train = self.cfg["train"]
        groups = {"weights": self.weights, "state": self.state}
        if self.method.uses_replay:
            if self.bank is None:
                raise RuntimeError(f"method {self.method.name!r} needs SMD replay, but replay is not enabled")
            groups["replay"] = self.bank.arrays([s for s in self.visited if s != site])
        return make_message(
            "visit", src="learner", dst=f"site:{site}",
            arrays=groups,
            config={**self.arch, "method": self.method.name, "hparams": pack_json(self.hparams),
                    "stage": stage, "steps": train["steps_per_stage"], "batch_size": train["batch_size"],
                    "seed": derive_seed(self.run_seed, "train", stage, site)},
        )

    def absorb(self, reply: RecordDict, site: str, stage: int) -> dict[str, float]:
        """Take the weights and state a site returns after its visit."""
        expect(reply, "model")
        self.weights = arrays(reply, "weights")
        self.state = arrays(reply, "state")
        logs = metrics(reply)
        self.visits.append({"site": site, "stage": stage, **logs})
        if site not in self.visited:
            self.visited.append(site)
        return logs

    def evaluate_message(self, site: str = "*") -> RecordDict:
        """The message asking a site to evaluate the current weights."""
        return make_message("evaluate", src="learner", dst=f"site:{site}",
                            arrays={"weights": self.weights},
                            config={**self.arch, "eval_batch_size": self.cfg["train"]["eval_batch_size"]})

    def weights_checkpoint(self) -> dict[str, np.ndarray]:
        """The current weights (for the run folder's checkpoint)."""
        return dict(self.weights)
