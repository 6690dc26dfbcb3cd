"""Differentially private prompt tuning: exact per-case gradients, the accountant, what leaves."""

import json

import numpy as np
import pytest
import torch
from sitekit import make_site

from server.learner import Learner
from server.methods import method_class
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.messages import metrics
from simulator.smd.backbone import to_model_space
from simulator.smd.cache import load_backbone
from sites.datasets import SiteData, build_site_data
from sites.dp_prompt import dp_tune_prompt, noise_multiplier, per_sample_grads, spent_epsilon


@pytest.fixture(scope="module")
def model(smd_backbone):
    return load_backbone(smd_backbone)


@pytest.fixture(scope="module")
def spec():
    from simulator.payloads import SiteSpec

    return SiteSpec(
        benchmark="phantom",
        site="alpha",
        site_index=0,
        seed=7,
        image_size=32,
        n_train=12,
        n_test=6,
        target="auto",
        test_fraction=0.25,
        data_dir="",
    )


@pytest.fixture(scope="module")
def data(spec):
    return build_site_data(spec)


def test_per_sample_gradients_are_each_samples_own(model, data):
    """The replica trick gives each sample's own gradient: they sum to the batch gradient, and
    changing one sample's image leaves every other sample's gradient as it was."""
    x = to_model_space(data.train_x[:4], data.train_y[:4], model.spec.image_size)
    prompt = model.prompt_init.clone()
    g = per_sample_grads(prompt, lambda p: p, model, x, torch.Generator().manual_seed(3))
    assert g.shape == (4, *prompt.shape)
    p = prompt.clone().requires_grad_(True)
    total = model.denoise_loss(x, p[None], torch.Generator().manual_seed(3), reduce=False).sum()
    (full,) = torch.autograd.grad(total, p)
    torch.testing.assert_close(g.sum(0), full, rtol=1e-4, atol=1e-7)
    x2 = x.clone()
    x2[1] = -x2[1]
    g2 = per_sample_grads(prompt, lambda p: p, model, x2, torch.Generator().manual_seed(3))
    torch.testing.assert_close(g2[[0, 2, 3]], g[[0, 2, 3]], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(g2[1], g[1])


def test_the_noise_is_calibrated_by_the_accountant():
    sigma = noise_multiplier(4.0, 1e-3, 0.25, 40)
    assert 0.5 < sigma < 5
    assert spent_epsilon(sigma, 0.25, 40, 1e-3) <= 4.0 + 1e-6
    assert (
        spent_epsilon(sigma * 0.9, 0.25, 40, 1e-3) > 4.0
    )  # no slack: the smallest sigma that fits
    assert noise_multiplier(1.0, 1e-3, 0.25, 40) > sigma  # a smaller budget needs more noise


def test_dp_tuning_spends_at_most_its_budget_and_reports_no_private_loss(model, data):
    ids = data.case_ids()
    prompt, logs = dp_tune_prompt(
        model,
        data.train_x,
        data.train_y,
        ids,
        steps=6,
        lr=0.05,
        batch=4,
        gen=torch.Generator().manual_seed(0),
        epsilon=8.0,
        delta=0.0,
        clip=0.05,
    )
    n = len(np.unique(ids))
    assert prompt.shape == tuple(model.prompt_init.shape) and prompt.dtype == np.float32
    assert logs["dp_epsilon"] <= 8.0 + 1e-6 and logs["dp_delta"] == pytest.approx(1 / (10 * n))
    assert (
        logs["dp_cases"] == n
        and logs["dp_sample_rate"] == pytest.approx(4 / n)
        and logs["prompt_steps"] == 6
    )
    assert not any("loss" in k for k in logs)
    again, _ = dp_tune_prompt(
        model,
        data.train_x,
        data.train_y,
        ids,
        steps=6,
        lr=0.05,
        batch=4,
        gen=torch.Generator().manual_seed(0),
        epsilon=8.0,
        delta=0.0,
        clip=0.05,
    )
    np.testing.assert_array_equal(prompt, again)  # seeded: a run reproduces


def test_the_privacy_unit_is_the_case(model, data):
    """Slices of one case count once: the sample rate and delta follow the number of cases."""
    grouped = SiteData(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        train_cases=np.arange(len(data.train_x)) // 3,
    )
    n = len(np.unique(grouped.case_ids()))
    assert n == -(-len(data.train_x) // 3)
    _, logs = dp_tune_prompt(
        model,
        grouped.train_x,
        grouped.train_y,
        grouped.case_ids(),
        steps=2,
        lr=0.05,
        batch=2,
        gen=torch.Generator().manual_seed(0),
        epsilon=4.0,
        delta=0.0,
        clip=0.05,
    )
    assert logs["dp_cases"] == n and logs["dp_delta"] == pytest.approx(1 / (10 * n))


def test_a_site_sends_a_dp_prompt_with_only_the_declared_dp_logs(smd_backbone, spec):
    cfg = build_config("smoke", parse_set(["run.method=smd_replay", "privacy.dp_epsilon=4"]))
    site = make_site(spec, dp_epsilon=4.0)
    learner = Learner(
        cfg, method_class(cfg.run.method), method_hparams(cfg, cfg.run.method), in_channels=1
    )
    learner.enable_replay(str(smd_backbone), 1)
    reply = site.handle("tune_prompt", learner.tune_message("alpha"))
    logs = metrics(reply)
    assert 0 < logs["dp_epsilon"] <= 4 + 1e-6 and not any("loss" in k for k in logs)
    assert site.guard_counts()["violations"] == 0


def test_a_dp_run_reports_epsilon_per_site_in_the_audit(tmp_path):
    from simulator.driver import api

    out = tmp_path / "dp"
    cfg = build_config(
        "smoke",
        parse_set(
            [
                "runtime.engine=inprocess",
                "run.sites=2",
                "run.method=smd_replay",
                "train.steps_per_stage=2",
                "privacy.dp_epsilon=4",
                f"run.out={out}",
            ]
        ),
    )
    api.run(cfg, progress=False)
    audit = json.loads((out / "privacy_audit.json").read_text())
    formal = audit["claims"]["formal"]
    assert audit["verdict"] == "pass" and formal["verdict"] == "bounded"
    assert set(formal["sites"]) == {"alpha", "bravo"} and formal["epsilon"] <= 4 + 1e-6
    # model mode: the weights are covered too, each site's prompt and training composed
    assert "the weights its visit returned" in formal["claim"]
    assert all({"prompt", "training"} <= set(row) for row in formal["sites"].values())
    assert "epsilon" in (out / "privacy_audit.md").read_text()
