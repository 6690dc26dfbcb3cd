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
from simulator.messages import arrays, expect, make_message, metrics, pack_json
from simulator.seeding import derive_seed
from simulator.segmentation import build_model


class Learner:
    """Holds the model between visits and speaks to sites only through messages."""

    def __init__(self, config: dict[str, Any], in_channels: int) -> None:
        self.cfg = config
        run, model_cfg, train = config["run"], config["model"], config["train"]
        self.method = method_class(run["method"])
        self.run_seed = int(run["seed"])
        self.arch = {"in_channels": in_channels, "width": model_cfg["width"], "depth": model_cfg["depth"]}
        model = build_model(in_channels, model_cfg["width"], model_cfg["depth"],
                            seed=derive_seed(self.run_seed, "model_init"))
        self.weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        self.state: dict[str, np.ndarray] = {}
        self.hparams = {"lr": train["lr"], **config.get("methods", {}).get(run["method"], {})}
        self.visits: list[dict[str, Any]] = []

    def n_parameters(self) -> int:
        return int(sum(v.size for v in self.weights.values()))

    def visit_message(self, site: str, stage: int) -> RecordDict:
        """The message that starts a visit of ``site`` at ``stage``."""
        train = self.cfg["train"]
        return make_message(
            "visit", src="learner", dst=f"site:{site}",
            arrays={"weights": self.weights, "state": self.state},
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
        return logs

    def evaluate_message(self, site: str = "*") -> RecordDict:
        """The message asking a site to evaluate the current weights."""
        return make_message("evaluate", src="learner", dst=f"site:{site}",
                            arrays={"weights": self.weights},
                            config={**self.arch, "eval_batch_size": self.cfg["train"]["eval_batch_size"]})

    def weights_checkpoint(self) -> dict[str, np.ndarray]:
        """The current weights (for the run folder's checkpoint)."""
        return dict(self.weights)
