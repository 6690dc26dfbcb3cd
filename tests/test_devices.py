"""Every device-sensitive path computes where ``runtime.device`` says, checked without a GPU.

The ``meta`` device holds shapes and no values, and refuses an operation that mixes it with a
CPU tensor, as CUDA does: each path below runs with its model or data placed on ``meta`` inside
:func:`simulator.devices.placement_check` (results read through ``to_host`` come back as zeros).
A tensor left on the CPU fails here the way it fails on a GPU ("Expected all tensors to be on the
same device").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sitekit import make_site

from server.learner import Learner
from server.methods import build_method, method_class
from simulator.config import build_config, parse_set
from simulator.devices import placement_check, resolve_device, to_device, to_host
from simulator.driver.plan import method_hparams
from simulator.errors import ConfigError
from simulator.messages import metrics
from simulator.payloads import is_error
from simulator.smd.cache import load_backbone
from simulator.visit import LocalVisit

META = torch.device("meta")


@pytest.fixture()
def meta_backbone(smd_backbone):
    return load_backbone(smd_backbone).to(META)


@pytest.fixture()
def data(smoke_spec):
    from sites.datasets import build_site_data

    return build_site_data(smoke_spec)


def test_the_transfer_point_puts_data_on_the_device_and_brings_results_back():
    x = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (t,) = to_device(torch.device("cpu"), x)
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    t[0, 0] = 9  # a copy, never the caller's array
    assert x[0, 0] == 0
    (m,) = to_device(META, x)
    assert m.is_meta
    with placement_check():
        assert to_host(m).shape == (2, 3)
    with pytest.raises(NotImplementedError):  # outside a placement check, meta has no values
        to_host(m)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="runtime.device=cuda"):
            resolve_device("cuda")


def test_membership_inference_runs_on_the_backbones_device(meta_backbone, data):
    from sites.memorisation import membership_inference

    prompt = np.zeros((meta_backbone.spec.tokens, meta_backbone.spec.token_dim), np.float32)
    with placement_check():
        out = membership_inference(
            meta_backbone, prompt, (data.train_x, data.train_y), (data.test_x, data.test_y), seed=0
        )
    assert 0.0 <= out["mia_auc"] <= 1.0


def test_prompt_tuning_runs_on_the_backbones_device(meta_backbone, data):
    from simulator.seeding import torch_generator
    from sites.dp_prompt import dp_tune_prompt
    from sites.prompt import tune_prompt

    with placement_check():
        prompt, _ = tune_prompt(
            meta_backbone, data.train_x, data.train_y, 4, 0.02, 4, torch_generator(0), candidates=2
        )
        dp, _ = dp_tune_prompt(
            meta_backbone,
            data.train_x,
            data.train_y,
            data.case_ids(),
            2,
            0.02,
            4,
            torch_generator(0),
            4.0,
            0.0,
            0.03,
        )
    spec = meta_backbone.spec
    assert prompt.shape == dp.shape == (spec.tokens, spec.token_dim)


def test_replay_sampling_runs_on_the_backbones_device(meta_backbone):
    from simulator.seeding import torch_generator

    tokens = torch.zeros(meta_backbone.spec.tokens, meta_backbone.spec.token_dim)
    with placement_check():
        x = meta_backbone.sample(tokens, 3, 2, torch_generator(0))
    assert x.device.type == "cpu" and x.shape[0] == 3


def test_fidelity_and_attribution_train_on_the_sites_device(data):
    from sites.attribution import train_detector_and_score
    from sites.fidelity import tstr

    real, test = (data.train_x, data.train_y), (data.test_x, data.test_y)
    with placement_check():
        out = tstr(real, test, real, steps=2, seed=0, device=META)
        scores = train_detector_and_score(
            data.train_x, data.test_x, data.train_x[:4], steps=2, seed=0, device=META
        )
    assert set(out) == {"tstr_dice_synthetic", "tstr_dice_real", "tstr_ratio"}
    assert scores.shape == (4,)


def test_a_sites_evaluation_and_visit_run_on_its_device(smoke_spec):
    cfg = build_config("smoke", parse_set(["run.method=finetune"]))
    learner = Learner(cfg, method_class("finetune"), method_hparams(cfg, "finetune"), 1)
    site = make_site(smoke_spec, device="meta")
    with placement_check():
        reply = site.handle("evaluate", learner.evaluate_message())
    assert not is_error(reply) and metrics(reply)["n"] == smoke_spec.n_test
    train = tuple(t.to(META) for t in site.tensors[:2])
    replay = {"bravo/x": np.zeros((4, 1, 32, 32), np.float32), "bravo/y": np.zeros((4, 1, 32, 32))}
    msg = learner.visit_message("alpha", 2)
    from simulator.payloads import VisitRequest

    req = VisitRequest.from_record(msg)
    smg = {"method": "smg", "hparams": method_hparams(cfg, "smg"), "replay": replay}
    req = VisitRequest(**{**req.__dict__, **smg})
    visit = LocalVisit.start(req, "alpha", train, META, build_method)
    batch = visit.batch()
    assert batch.x.is_meta and all(x.is_meta and y.is_meta for x, y in batch.replay.values())
    assert all(p.is_meta for p in visit.model.parameters())
