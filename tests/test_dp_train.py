"""DP training during a visit: the DP steps are the methods' steps with every private gradient a
clipped, noised query; the site draws the sample and the noise from its secret, counts the
queries, refuses methods without a DP step; the audit bounds prompt and weights together."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from sitekit import make_site

from server.learner import Learner
from server.methods import method_class
from server.methods.dp_steps import dp_pga_gradient
from server.methods.inner_step import AdamStep
from server.methods.meta_gradient import (
    Roles,
    first_order_gradient,
)
from simulator.config import build_config, parse_set
from simulator.dp import PrivateMean, composed_epsilon, per_case_grads
from simulator.driver.plan import method_hparams, plan_run
from simulator.errors import ConfigError
from simulator.messages import metrics
from simulator.optim import Adam
from simulator.payloads import SiteSpec
from simulator.segmentation import build_model, seg_loss

B = 5


def _setup(n_dom, seed=0):
    model = build_model(1, 4, 2, seed=seed).to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand((B, 1, 16, 16), generator=gen) > 0.5).double()

    def dom(n=B):
        x = torch.rand((n, 1, 16, 16), generator=gen, dtype=torch.float64)
        return x, (x > 0.5).double()

    doms = [dom() for _ in range(n_dom)]
    return model, doms, y


def _adam(model, doms):
    opt = Adam(model.parameters(), lr=1e-3)
    for x, y in doms[:3]:
        model.zero_grad()
        seg_loss(model(x), y).backward()
        opt.step()
    return opt


def _exact(n=B):
    """No clipping, no noise, the expected batch the batch itself: the plain mean gradient."""
    return PrivateMean(clip=1e12, sigma=0.0, expected=n, generator=torch.Generator())


CASES = {
    "smg": Roles(current=0, replay=(1, 2, 3), group_a=(0, 3), group_b=(1, 2), lambda_gen=0.7),
    "smg_mem": Roles(current=0, replay=(1, 2, 3), group_a=(0,), group_b=(1, 2, 3), shift_gen=False),
    "smg_gen": Roles(current=0, replay=(1, 2, 3), group_a=(0, 1), group_b=(2, 3), shift_mem=False),
    "matched": Roles(
        current=0, replay=(1, 2), group_a=(0, 2), group_b=(1,), shift_mem=False, shift_gen=False
    ),
    "first_visit": Roles(current=0, group_a=(2,), group_b=(1,), lambda_gen=0.5),
    "first_visit_unshifted": Roles(current=0, group_a=(1,), group_b=(2,), shift_gen=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_dp_step_without_clipping_or_noise_is_the_non_dp_step(case):
    roles = CASES[case]
    model, doms, y = _setup(4)
    if not roles.replay:  # the first visit: the batch and two views of it, the same masks
        doms = [(doms[0][0], y), (doms[1][0], y), (doms[2][0], y)]
    opt = _adam(model, doms)
    private = _exact()
    got = dp_pga_gradient(model, doms, roles, AdamStep(opt, 1.0), private)
    want = first_order_gradient(model, doms, roles, AdamStep(opt, 1.0))
    for a, b in zip(got.grads, want.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert got.inner_rms == pytest.approx(want.inner_rms, rel=1e-9)
    shifted_first_visit = not roles.replay and roles.shift_gen
    assert private.queries == (2 if shifted_first_visit else 1)


def test_the_private_mean_clips_each_case_and_adds_noise_of_the_stated_scale():
    per_case = [torch.tensor([[3.0, 4.0], [0.3, 0.4]]), torch.zeros((2, 3))]  # norms 5 and 0.5
    exact = PrivateMean(clip=1.0, sigma=0.0, expected=4.0, generator=torch.Generator())
    out = exact(per_case)
    torch.testing.assert_close(out[0], torch.tensor([0.6 + 0.3, 0.8 + 0.4]) / 4)
    noisy = PrivateMean(
        clip=2.0, sigma=1.5, expected=4.0, generator=torch.Generator().manual_seed(0)
    )
    big = [torch.zeros((0, 200_000))]  # no case drawn: the noise alone
    std = float(noisy(big)[0].std())
    assert std == pytest.approx(1.5 * 2.0 / 4.0, rel=0.01)
    assert noisy.queries == 1


def test_per_case_gradients_are_each_cases_own():
    model, doms, _ = _setup(1)
    x, y = doms[0]
    params = dict(model.named_parameters())

    def loss(p, a, b):
        return seg_loss(torch.func.functional_call(model, p, (a[None],)), b[None])

    got = per_case_grads(loss, params, x, y)
    for i in (0, 3):
        ref = torch.autograd.grad(
            seg_loss(model(x[i : i + 1]), y[i : i + 1]), list(params.values())
        )
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a[i], b)


def test_the_composition_of_prompt_and_training_is_below_the_sum_of_their_epsilons():
    parts = [(2.4, 0.67, 5), (2.05, 0.33, 12)]
    total = composed_epsilon(parts, 2 * 0.0021)
    alone = [composed_epsilon([p], 0.0021) for p in parts]
    assert max(alone) < total < sum(alone)


# -- the site's side -----------------------------------------------------------------------------
SPEC = SiteSpec("phantom", "alpha", 0, 7, 32, 12, 6, "auto", 0.25, "")


@pytest.fixture(scope="module")
def learners():
    def make(method, sets=()):
        cfg = build_config("smoke", parse_set([f"run.method={method}", *sets]))
        return Learner(cfg, method_class(method), method_hparams(cfg, method), in_channels=1)

    return make


def _code(rd) -> str:
    return str(rd["config"]["error"]) if "error" in rd["config"] else ""


def _visit(site, learner, steps=3):
    from simulator.payloads import ModelReply, TrainRequest

    assert _code(site.handle("start_visit", learner.visit_message("alpha", 1))) == ""
    train = site.handle("train", TrainRequest(steps).to_record("learner", "site:alpha"))
    assert _code(train) == "" and "loss" not in metrics(train)
    return ModelReply.from_record(site.handle("finish_visit", None))


def test_a_site_under_dp_trains_with_noise_from_its_secret_and_sends_no_loss(tmp_path, learners):
    spec = dataclasses.replace(SPEC, data_dir=str(tmp_path / "alpha"))
    learner = learners("finetune", ["privacy.dp_epsilon=4"])
    first = _visit(make_site(spec, run="r1", dp_epsilon=4.0), learner)
    again = _visit(make_site(spec, run="r1", dp_epsilon=4.0), learner)  # a new process, same secret
    assert all(np.array_equal(first.weights[k], again.weights[k]) for k in first.weights)
    assert first.mean_loss == 0.0 and set(first.logs) == {
        "dp_train_epsilon",
        "dp_train_delta",
        "dp_train_noise_multiplier",
        "dp_train_sample_rate",
        "dp_train_steps",
        "dp_train_queries",
        "dp_train_cases",
        "dp_train_clip",
        "dp_dataset_epsilon",
    }
    assert first.logs["dp_train_epsilon"] <= 2.0 * 1.001  # the training share (0.5) of 4
    assert first.logs["dp_train_delta"] < 1 / first.logs["dp_train_cases"]
    (tmp_path / "alpha" / ".smg-sim-site" / "secret").write_bytes(bytes(range(32)))  # another
    other = _visit(make_site(spec, run="r1", dp_epsilon=4.0), learner)
    assert not all(np.array_equal(first.weights[k], other.weights[k]) for k in first.weights)


def test_a_site_under_dp_refuses_a_method_without_a_dp_step(tmp_path, learners):
    spec = dataclasses.replace(SPEC, data_dir=str(tmp_path / "alpha"))
    site = make_site(spec, run="r1", dp_epsilon=4.0)
    for method in ("lwf", "ewc"):
        reply = site.handle("start_visit", learners(method).visit_message("alpha", 1))
        assert _code(reply) == "dp-method"


@pytest.mark.parametrize(
    "method, sets, why",
    [
        ("lwf", [], "no per-case DP form"),
        ("pga_exact", [], "double back-propagation"),
        ("smg", ["methods.smg.gen_lead=random"], "gen_lead=current"),
    ],
)
def test_a_run_refuses_a_method_that_cannot_train_under_dp(method, sets, why):
    cfg = build_config("smoke", parse_set([f"run.method={method}", "privacy.dp_epsilon=4", *sets]))
    with pytest.raises(ConfigError, match=why):
        plan_run(cfg)
    # prompt-only mode trains at the learner, on synthetic images: nothing to refuse
    prompt = build_config(
        "smoke",
        parse_set([f"run.method={method}", "privacy.dp_epsilon=4", "privacy.exports=prompt"]),
    )
    plan_run(prompt)


def test_a_model_mode_run_under_dp_bounds_the_prompt_and_the_weights(smd_backbone, tmp_path):
    from simulator.driver import api

    out = tmp_path / "run"
    sets = [
        "runtime.engine=inprocess",
        "run.sites=2",
        "run.method=smg",
        "train.steps_per_stage=4",
        "privacy.dp_epsilon=4",
        f"run.out={out}",
    ]
    api.run(build_config("smoke", parse_set(sets)), progress=False)
    audit = json.loads((out / "privacy_audit.json").read_text())
    formal = audit["claims"]["formal"]
    assert audit["verdict"] == "pass" and formal["verdict"] == "bounded"
    assert formal["epsilon"] <= 4.0 and formal["delta_below_one_over_n"]
    assert "the weights its visit returned" in formal["claim"]
    for site, row in formal["sites"].items():
        assert {"prompt", "training", "total"} <= set(row), site
        assert row["training"]["epsilon"] <= 2.0 * 1.001 and row["total"]["composition"] == "RDP"
    first = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()][1]
    assert first["dp_train_queries"] == 2  # the first visit: the leading view, then the step
    assert not any(k.startswith("loss") or k.startswith("cos/") for k in first)


# -- the budget of a data set across runs --------------------------------------------------------
def _folder_run(root, out, seed, sets=()):
    from simulator.driver import api

    cfg = build_config(
        "smoke",
        parse_set(
            [
                "runtime.engine=inprocess",
                f"data.benchmark=folder:{root}",
                "run.method=finetune",
                "train.steps_per_stage=2",
                f"run.seed={seed}",
                "privacy.dp_epsilon=2",
                f"run.out={out}",
                *sets,
            ]
        ),
    )
    return api.run(cfg, progress=False)


def test_runs_on_one_data_set_compose_and_a_run_past_the_budget_is_refused_unread(tmp_path):
    """Three runs at epsilon 2 on the same user data set: the sites' ledgers compose them in RDP
    (more than one run's, at most the sum); with dp_budget just above that, a fourth run is
    refused at its settings check, before the site decodes an image."""
    from layouts import make_folder

    from simulator.errors import SiteFailure

    root = make_folder(tmp_path / "data", sites=("north", "south"), n=12, split_site=None)
    totals = []
    for seed in range(3):
        _folder_run(root, tmp_path / f"run{seed}", seed)
        audit = json.loads((tmp_path / f"run{seed}" / "privacy_audit.json").read_text())
        rows = audit["claims"]["formal"]["sites"]
        totals.append(max(r["total"]["dataset_epsilon"] for r in rows.values()))
    assert totals[0] <= 2.0 * 1.001 and totals[0] < totals[1] < totals[2] <= 6.0, totals
    ledgers = list((root / "north" / ".smg-sim-site").glob("dp-ledger-files-*.json"))
    assert len(ledgers) == 1 and len(json.loads(ledgers[0].read_text())["charges"]) == 3
    with pytest.raises(SiteFailure) as failure:
        _folder_run(root, tmp_path / "run3", 3, [f"privacy.dp_budget={totals[2] + 0.01:.4f}"])
    assert failure.value.code == "dp-budget"
    # the same refusal from the site itself: its data never decoded
    cfg = build_config("smoke", parse_set([f"data.benchmark=folder:{root}", "run.method=finetune"]))
    spec = plan_run(cfg).specs["north"]
    site = make_site(spec, run="r4", dp_epsilon=2.0, dp_budget=totals[2] + 0.01)
    reply = site.handle("check", site.settings.expected().to_record("learner", "site:north"))
    assert _code(reply) == "dp-budget" and "data" not in site.__dict__


def test_an_identical_request_is_charged_once(tmp_path, learners):
    spec = dataclasses.replace(SPEC, data_dir=str(tmp_path / "alpha"))
    learner = learners("finetune", ["privacy.dp_epsilon=4"])
    site = make_site(spec, run="r1", dp_epsilon=4.0)
    first = _visit(site, learner).logs["dp_dataset_epsilon"]
    again = _visit(make_site(spec, run="r1", dp_epsilon=4.0), learner).logs["dp_dataset_epsilon"]
    assert again == first  # a retried visit: the same request, no new charge
    learner.weights = {k: v + 1e-3 for k, v in learner.weights.items()}
    other = _visit(make_site(spec, run="r2", dp_epsilon=4.0), learner).logs["dp_dataset_epsilon"]
    assert other > first


def test_a_run_gets_no_more_than_its_epsilon_however_often_it_asks(tmp_path, learners):
    """A learner that asks for visit after visit in one run (each another request, so each
    charged): the site refuses once the run's mechanisms, composed, would pass dp_epsilon."""
    from sites.dp_budget import DatasetBudget

    spec = dataclasses.replace(SPEC, data_dir=str(tmp_path / "alpha"))
    learner = learners("finetune", ["privacy.dp_epsilon=1"])
    site = make_site(spec, run="r1", dp_epsilon=1.0)
    codes = []
    for _ in range(8):
        learner.weights = {name: v + 1e-3 for name, v in learner.weights.items()}
        reply = site.handle("start_visit", learner.visit_message("alpha", 1))
        codes.append(_code(reply))
        if codes[-1]:
            break
        site.handle("finish_visit", None)
    assert codes[-1] == "dp-budget" and codes.count("") >= 1, codes
    book = json.loads(
        next((tmp_path / "alpha" / ".smg-sim-site").glob("dp-ledger-*.json")).read_text()
    )
    mechanisms = [tuple(m) for c in book["charges"].values() for m in c["mechanisms"]]
    assert composed_epsilon(mechanisms, book["delta"]) <= 1.0 * (1 + 1e-6)
    assert isinstance(site.dataset_budget, DatasetBudget)
