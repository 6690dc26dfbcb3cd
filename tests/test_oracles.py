"""No oracles and a scalar budget: the techniques a learner could use to pull private data out
through a site's answers, each tried against a real site and stopped.

* declared queries on learner-supplied images (fidelity, attribution): a budget per run,
  duplicates refused, figures quantised;
* scalars: each at its declared resolution, every reply counted in bits against the site's cap
  per run, which outlives the site's process;
* DP: the noise comes from the site's secret, never from the request; delta below 1/n.
"""

import dataclasses

import numpy as np
import pytest
import torch
from sitekit import make_site

from server.learner import Learner
from server.methods import method_class
from simulator import schemas
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.errors import SiteFailure
from simulator.messages import metrics
from simulator.payloads import AttributeRequest, ErrorReply, FidelityRequest, SiteSpec
from simulator.schemas import MetricRule
from sites.site_state import SiteState


def _code(rd) -> str:
    return str(rd["config"]["error"]) if "error" in rd["config"] else ""


#: the tests' tiny phantom site (conftest's ``smoke_spec``), kept in a folder of its own here
SPEC = SiteSpec("phantom", "alpha", 0, 7, 32, 12, 6, "auto", 0.25, "")


def _spec(tmp_path, site="alpha") -> SiteSpec:
    return dataclasses.replace(SPEC, site=site, data_dir=str(tmp_path / site))


@pytest.fixture(scope="module")
def learner():
    cfg = build_config("smoke", parse_set(["run.method=finetune"]))
    return Learner(cfg, method_class("finetune"), method_hparams(cfg, "finetune"), in_channels=1)


def _fidelity(x: np.ndarray, site="alpha") -> object:
    y = (x > 0.5).astype(np.float32)
    req = FidelityRequest({f"{site}/x": x, f"{site}/y": y}, 2, 0, {}, "", "")
    return req.to_record("learner", f"site:{site}")


def _candidates(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 32, 32), dtype=np.float32)


# -- learner-chosen queries ----------------------------------------------------------------------
def test_pixel_by_pixel_probing_through_fidelity_is_stopped_by_the_query_budget(tmp_path):
    """The reconstruction technique: one candidate pixel changed per request, the nearest-neighbour
    distance read back. A run gets ``fidelity_queries`` answers (the same request again is free)."""
    site = make_site(_spec(tmp_path), run="r1")
    base = _candidates(6)
    answers = []
    for k in range(3):
        probe = base.copy()
        probe[0, 0, 0, k] = 0.5
        answers.append(site.handle("fidelity", _fidelity(probe)))
    assert [_code(a) for a in answers] == ["", "", "query-budget"]
    probe = base.copy()
    probe[0, 0, 0, 0] = 0.5
    again = site.handle("fidelity", _fidelity(probe))  # identical to the first: answered again
    assert _code(again) == ""
    same = {k: v for k, v in metrics(again).items() if not k.endswith("seconds")}
    assert same == {k: v for k, v in metrics(answers[0]).items() if not k.endswith("seconds")}


def test_sub_resolution_probes_get_identical_answers(tmp_path):
    """The differential technique needs answers that move with a tiny change of a candidate:
    distances leave only at 0.01 and shares at 0.001."""
    site = make_site(_spec(tmp_path), run="r1")
    base = _candidates(6, seed=1)
    nudged = base.copy()
    nudged[0, 0, 3, 3] += 1e-3
    a, b = (metrics(site.handle("fidelity", _fidelity(x))) for x in (base, nudged))
    dist = [k for k in a if k.startswith(("nn_", "real_nn"))]
    assert dist and all(a[k] == b[k] for k in dist)
    for k in dist:
        assert abs(a[k] / 0.01 - round(a[k] / 0.01)) < 1e-6, (k, a[k])


def test_copies_in_a_candidate_set_are_refused(tmp_path):
    """Sets made of one image many times (exact or nearly) would turn a set's figure into that
    image's figure."""
    site = make_site(_spec(tmp_path), run="r1")
    one = _candidates(1, seed=2)
    copies = np.repeat(one, 6, axis=0)
    near = copies + np.random.default_rng(3).normal(0, 1e-3, copies.shape).astype(np.float32)
    assert _code(site.handle("fidelity", _fidelity(copies))) == "refused-query"
    assert _code(site.handle("fidelity", _fidelity(near))) == "refused-query"
    queries = np.concatenate([copies[:4], _candidates(4, seed=4)])
    req = AttributeRequest(("a", "b"), (4, 4), queries, _candidates(8, seed=5), 1, 0)
    assert _code(site.handle("attribute", req.to_record("learner", "site:alpha"))) == (
        "refused-query"
    )


def test_attribution_scores_leave_per_set_at_their_resolution_and_within_the_budget(tmp_path):
    site = make_site(_spec(tmp_path), run="r1")
    public = _candidates(8, seed=9)
    codes = []
    for k in range(3):
        req = AttributeRequest(("a", "b"), (4, 4), _candidates(8, seed=10 + k), public, 1, 0)
        reply = site.handle("attribute", req.to_record("learner", "site:alpha"))
        codes.append(_code(reply))
        if not codes[-1]:
            got = metrics(reply)
            assert set(got) == {"n_scored", "score/a", "score/b"}
            assert all(abs(v * 1000 - round(v * 1000)) < 1e-6 for v in got.values())
    assert codes == ["", "", "query-budget"]


def test_the_copy_threshold_is_the_sites_not_the_requests(tmp_path):
    site = make_site(_spec(tmp_path), run="r1", nn_threshold=0.05)
    rd = _fidelity(_candidates(6, seed=6))
    rd["config"]["nn_threshold"] = 1.0  # a learner that tries to choose it
    assert _code(site.handle("fidelity", rd)) == "bad-request"
    got = metrics(site.handle("fidelity", _fidelity(_candidates(6, seed=6))))
    assert got["nn_threshold"] == 0.05


# -- scalars -------------------------------------------------------------------------------------
def test_every_declared_scalar_carries_a_bounded_number_of_bits():
    """Full-precision floats carried 30 to 40 bits each; every rule is now at most 30."""
    tables = [v for k, v in vars(schemas).items() if k.isupper() and isinstance(v, dict)]
    rules = [r for t in tables for r in t.values() if isinstance(r, MetricRule)]
    rules = [r for r in rules if r is not schemas.TRACE_DIGEST]  # the trace's integrity, 48
    assert rules and max(r.bits() for r in rules) <= 30
    assert schemas.LOSS.bits() < 17 and schemas.SECONDS.bits() < 24


def test_many_small_visits_are_stopped_by_the_cap(tmp_path, learner):
    """The one-loss-per-visit technique: one-step visits, one chunk each, losses read back. Each
    reply is counted; the site refuses once the run's cap would be passed, so what it sent stays
    within it."""
    cap = 1500
    site = make_site(_spec(tmp_path), run="r1", scalar_bits_cap=cap)
    received, refused, visits = 0.0, "", 0
    for stage in range(1, 200):
        learner.weights = {k: v + 1e-4 * stage for k, v in learner.weights.items()}
        for op, msg in (
            ("start_visit", learner.visit_message("alpha", stage)),
            ("train", _train(1)),
            ("finish_visit", None),
        ):
            reply = site.handle(op, msg)
            if _code(reply):
                refused = _code(reply)
                break
            received += float(reply["meta"]["bits"])
        if refused:
            break
        visits += 1
    assert refused == "scalar-budget" and received <= cap
    assert 0 < visits < 20
    assert site.state.spent() <= cap + 200  # the refusals' own (constant) replies counted too


def _train(steps: int):
    from simulator.payloads import TrainRequest

    return TrainRequest(steps).to_record("learner", "site:alpha")


def test_an_identical_request_costs_nothing_again_and_the_budget_outlives_the_process(tmp_path):
    spec = _spec(tmp_path)
    site = make_site(spec, run="r1")
    site.handle("describe")
    spent = site.state.spent()
    assert spent > 0
    site.handle("describe")
    assert site.state.spent() == spent
    again = make_site(spec, run="r1")  # a new process of the same site, the same run
    assert again.state.spent() == spent
    other = make_site(spec, run="r2")
    assert other.state.spent() == 0


def test_a_reply_states_the_bits_its_scalars_can_carry(tmp_path, learner):
    site = make_site(_spec(tmp_path), run="r1")
    reply = site.handle("evaluate", learner.evaluate_message("alpha"))
    bits = float(reply["meta"]["bits"])
    expected = sum(schemas.EVALUATE[k].bits() for k in ("dice", "dice_std", "n"))
    assert abs(bits - expected) < 1e-2
    assert site.handle("guard_report")["metrics"]["scalar_bits"] >= int(bits)


# -- DP randomness from the site's secret ----------------------------------------------------------
@pytest.fixture(scope="module")
def dp_learner(smd_backbone):
    cfg = build_config("smoke", parse_set(["run.method=smd_replay", "privacy.dp_epsilon=4"]))
    ln = Learner(
        cfg, method_class(cfg.run.method), method_hparams(cfg, cfg.run.method), in_channels=1
    )
    ln.enable_replay(str(smd_backbone), 1)
    return ln


def _prompt(reply) -> np.ndarray:
    from simulator.payloads import PromptReply

    return PromptReply.from_record(reply).tokens


def test_dp_noise_comes_from_the_sites_secret_not_the_request(tmp_path, dp_learner):
    """Identical requests give identical prompts (in a new process too: resume stays
    byte-identical); another request gives other noise; a learner that replays the mechanism with
    the request's seed does not get the site's prompt."""
    from simulator.seeding import torch_generator
    from sites.dp_prompt import dp_tune_prompt

    spec = _spec(tmp_path)
    site = make_site(spec, run="r1", dp_epsilon=4.0)
    msg = dp_learner.tune_message("alpha")
    first = _prompt(site.handle("tune_prompt", msg))
    assert np.array_equal(
        first,
        _prompt(
            make_site(spec, run="r1", dp_epsilon=4.0).handle(
                "tune_prompt", dp_learner.tune_message("alpha")
            )
        ),
    )
    other = dp_learner.tune_message("alpha")
    other["config"]["seed"] = int(other["config"]["seed"]) + 1
    assert not np.array_equal(first, _prompt(site.handle("tune_prompt", other)))
    secret = (tmp_path / "alpha" / ".smg-sim-site" / "secret").stat()
    assert secret.st_mode & 0o777 == 0o600
    cfg = dp_learner.cfg
    d = site.data
    replayed, _ = dp_tune_prompt(
        dp_learner.bank.backbone,
        d.train_x,
        d.train_y,
        d.case_ids(),
        cfg.smd.prompt_steps,
        float(msg["config"]["lr"]),
        int(msg["config"]["batch"]),
        torch_generator(int(msg["config"]["seed"])),
        4.0,
        0.0,
        cfg.privacy.dp_clip,
    )
    assert not np.allclose(replayed, first)


def test_a_delta_not_below_one_over_n_is_refused_naming_n(tmp_path, learner):
    site = make_site(_spec(tmp_path), run="r1", dp_epsilon=1.0, dp_delta=0.1)
    check = dataclasses.replace(site.settings).expected().to_record("learner", "site:alpha")
    reply = site.handle("check", check)
    assert _code(reply) == "dp-delta"
    err = ErrorReply.from_record(reply)
    failure = SiteFailure("alpha", "check", err.error, count=err.count)
    assert err.count == 12 and "n = 12" in str(failure) and "1/n" in str(failure)
    fine = make_site(_spec(tmp_path, "bravo"), run="r1", dp_epsilon=1.0, dp_delta=0.05)
    check = fine.settings.expected().to_record("learner", "site:bravo")
    assert _code(fine.handle("check", check)) == ""


def test_a_site_under_dp_sends_no_other_figure_of_its_images(tmp_path):
    site = make_site(_spec(tmp_path), run="r1", dp_epsilon=1.0)
    facts = metrics(site.handle("describe"))
    assert not {"foreground_fraction", "intensity_mean", "intensity_std"} & set(facts)
    fid = metrics(site.handle("fidelity", _fidelity(_candidates(6, seed=7))))
    assert set(fid) == set(schemas.FIDELITY_DP_NAMES)
    req = AttributeRequest(("a", "b"), (4, 4), _candidates(8, seed=8), _candidates(8, 9), 1, 0)
    assert _code(site.handle("attribute", req.to_record("learner", "site:alpha"))) == (
        "refused-query"
    )


def test_the_keyed_generator_depends_on_secret_purpose_and_request(tmp_path):
    a, b = SiteState(str(tmp_path / "a"), "r"), SiteState(str(tmp_path / "b"), "r")
    assert a.keyed_seed("dp", "x") == a.keyed_seed("dp", "x")
    assert len({a.keyed_seed("dp", "x"), a.keyed_seed("dp", "y"), b.keyed_seed("dp", "x")}) == 3
    assert a.keyed_seed("dp", "x") != a.keyed_seed("other", "x")
    g1, g2 = a.keyed_generator("dp", "x"), a.keyed_generator("dp", "x")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
