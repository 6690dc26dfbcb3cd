"""The site class without Ray: visits, evaluation, and what its methods return."""

import inspect

import numpy as np
import pytest
from flwr.app import RecordDict
from sitekit import OPERATOR_TOKEN, make_site

from server.learner import Learner
from server.methods import method_class
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.errors import MessageError
from simulator.messages import array_groups, arrays, make_message, metrics
from simulator.payloads import (
    EvaluateRequest,
    FaultRequest,
    GuardReport,
    PreviewRequest,
    TrainRequest,
    VisitRequest,
    is_error,
)
from simulator.schemas import FRACTION, Schema
from sites.blocklist import Blocklist
from sites.egress import EgressGuard, EgressViolation
from sites.site import Site


def _learner(cfg):
    """A learner for ``cfg`` with its method's resolved hyper-parameters."""
    return Learner(
        cfg, method_class(cfg.run.method), method_hparams(cfg, cfg.run.method), in_channels=1
    )


@pytest.fixture()
def site(smoke_spec):
    return make_site(smoke_spec)


@pytest.fixture()
def learner():
    return _learner(build_config("smoke", parse_set(["run.method=finetune"])))


def _all_arrays(rd: RecordDict):
    for group in array_groups(rd):
        yield from arrays(rd, group).items()


def test_visit_trains_and_returns_model(site, learner):
    before = {k: v.copy() for k, v in learner.weights.items()}
    reply = site.handle("visit", learner.visit_message("alpha", 1))
    assert reply["meta"]["kind"] == "model"
    learner.absorb(reply, "alpha", 1)
    changed = [k for k in before if not np.array_equal(before[k], learner.weights[k])]
    assert changed, "a visit must change the weights"
    assert metrics(reply)["steps"] == build_config("smoke").train.steps_per_stage


def test_evaluate_returns_only_scalars(site, learner):
    reply = site.handle("evaluate", learner.evaluate_message())
    assert array_groups(reply) == []
    m = metrics(reply)
    assert 0.0 <= m["dice"] <= 1.0 and m["n"] == 6


def test_no_site_operation_returns_an_image_shaped_array(site, smoke_spec, tmp_path, smd_backbone):
    """Call every operation of the site's entry point and inspect every array it returns."""
    h = w = smoke_spec.image_size
    learner = _learner(build_config("smoke", parse_set(["run.method=smd_replay"])))
    learner.enable_replay(str(smd_backbone), 1)
    prompt_reply = site.handle("tune_prompt", learner.tune_message("alpha"))
    learner.absorb_prompt(prompt_reply, "alpha")
    learner.visited.append("alpha")
    public_images = np.random.default_rng(0).random((4, 1, h, w), dtype=np.float32)

    def rec(payload, src="learner"):
        return payload.to_record(src, "site:alpha")

    calls = {
        "check": site.settings.expected().to_record("learner", "site:alpha"),
        "has_backbone": learner.backbone_check_message("alpha"),
        "install_backbone": learner.backbone_offer_message("alpha"),
        "tune_prompt": learner.tune_message("alpha"),
        "fidelity": learner.fidelity_message("alpha"),
        "attribute": learner.attribution_message("alpha", ["alpha"], public_images),
        "describe": None,
        "start_visit": learner.visit_message("alpha", 1),
        "train": rec(TrainRequest(3)),
        "finish_visit": None,
        "visit": learner.visit_message("alpha", 2),
        "evaluate": learner.evaluate_message(),
        "guard_report": None,
        "ping": None,
        "preload_smd": None,
        # the operator's (with its token)
        "preview": rec(PreviewRequest(str(tmp_path), 3, False), "driver"),
        "inspect": None,
        "crash_during": rec(FaultRequest("evaluation"), "driver"),  # armed: nothing evaluates after
    }
    tables = {**site._learner_ops, **site._operator_ops}
    assert set(tables) == set(calls), (
        f"new operation(s) must be covered here: {set(tables) ^ set(calls)}"
    )
    public = {n for n, _ in inspect.getmembers(Site, inspect.isfunction) if not n.startswith("_")}
    assert public == {
        "handle",
        "schema",
        "send",
        "metrics",
        "parallel_phase",
        "guard_counts",
        "restore_guard_counts",
    }
    seen = 0
    for op, payload in calls.items():
        reply = site.handle(op, payload, token=OPERATOR_TOKEN)
        assert isinstance(reply, RecordDict), op
        assert not is_error(reply), (op, dict(reply["config"]))
        assert reply["meta"]["kind"] in ("model", "metrics", "prompt"), op
        for key, arr in _all_arrays(reply):
            seen += 1
            assert arr.shape[-2:] != (h, w), f"{op} returned image-shaped {key} {arr.shape}"
            if reply["meta"]["kind"] != "model":
                assert arr.size % (h * w) != 0, (op, key, arr.shape)
    assert seen > 0


def test_method_state_and_hparams_travel_as_message(learner):
    msg = learner.visit_message("alpha", 1)
    assert dict(msg["config"])["method"] == "finetune"
    hparams = dict(msg["hparams"])  # a typed table of its own, not a JSON string
    assert hparams == {"lr": 1e-3, "weight_decay": 0.0} and isinstance(hparams["lr"], float)
    req = VisitRequest.from_record(msg)
    assert req.hparams == hparams and req.stage == 1 and req.arch.in_channels == 1


def test_payloads_round_trip_and_refuse_other_shapes(learner):
    msg = learner.evaluate_message()
    back = EvaluateRequest.from_record(msg)
    assert set(back.weights) == set(learner.weights) and back.eval_batch_size == 64
    msg["config"]["smuggled"] = "x"
    with pytest.raises(MessageError, match="evaluate message: undeclared config key 'smuggled'"):
        EvaluateRequest.from_record(msg)
    with pytest.raises(MessageError, match="expected a 'visit' message, got 'evaluate'"):
        VisitRequest.from_record(learner.evaluate_message())
    report = GuardReport("strict", {"violations": 1.0, "violations/model/exact": 1.0})
    again = GuardReport.from_record(report.to_record("site:alpha", "learner"))
    assert again == report


METRICS_ONLY = Schema("metrics", "site:alpha", ("learner",), metrics={"dice": FRACTION})


@pytest.mark.parametrize(
    "arrays_",
    [
        {"g": {"w": np.zeros((32, 32), np.float32)}},
        {"g": {"w": np.zeros((2, 1, 32, 32), np.float32)}},
        {"g": {"w": np.zeros((1024,), np.float32)}},
        {"g": {"w": np.zeros((3,), np.float32)}},  # not image-sized at all: still undeclared
    ],
)
def test_guard_blocks_every_undeclared_array(arrays_):
    guard = EgressGuard(
        "alpha", Blocklist({"img": np.random.default_rng(0).random((2, 1, 32, 32))})
    )
    with pytest.raises(EgressViolation, match="rule schema") as err:
        guard.check(make_message("metrics", "site:alpha", "learner", arrays=arrays_), METRICS_ONLY)
    assert err.value.site == "alpha" and err.value.key.startswith(
        "<undeclared"
    )  # its name is not repeated


def test_guard_blocks_wrong_kind_undeclared_scalars_and_values_out_of_range():
    guard = EgressGuard(
        "alpha", Blocklist({"img": np.random.default_rng(0).random((2, 1, 32, 32))})
    )
    with pytest.raises(EgressViolation, match="rule kind"):
        guard.check(make_message("visit", "site:alpha", "learner"), METRICS_ONLY)
    with pytest.raises(EgressViolation, match="rule kind"):
        guard.check(
            make_message("metrics", "site:bravo", "learner"), METRICS_ONLY
        )  # posing as another site
    with pytest.raises(EgressViolation, match="rule schema"):
        guard.check(
            make_message("metrics", "site:alpha", "learner", config={"px": "0.1,0.2"}), METRICS_ONLY
        )
    with pytest.raises(EgressViolation, match="rule schema"):
        guard.check(
            make_message("metrics", "site:alpha", "learner", metrics={"dice": 0.5, "px0": 0.3}),
            METRICS_ONLY,
        )
    with pytest.raises(EgressViolation, match="rule range"):
        guard.check(
            make_message("metrics", "site:alpha", "learner", metrics={"dice": 1.5}), METRICS_ONLY
        )
    out = guard.check(
        make_message("metrics", "site:alpha", "learner", metrics={"dice": 0.123456789}),
        METRICS_ONLY,
    )
    assert out["metrics"]["dice"] == pytest.approx(
        0.123457, abs=1e-12
    )  # rounded to the declared resolution


def test_replay_batch_is_shared_over_the_sites_a_step_replays():
    import torch

    from simulator.method import StageContext
    from simulator.visit import LocalVisit

    x = torch.rand((10, 1, 32, 32))
    replay = {"a": (x, x), "b": (x, x), "c": (x, x), "d": (x, x)}
    ctx = StageContext(
        "alpha", 5, 1, torch.device("cpu"), torch.Generator().manual_seed(0), sorted(replay)
    )
    every = LocalVisit(None, None, ctx, (x, x), replay, batch_size=8).batch()
    assert {k: len(v[0]) for k, v in every.replay.items()} == dict.fromkeys(replay, 2)
    two = LocalVisit(None, None, ctx, (x, x), replay, batch_size=8, replay_sites=2).batch()
    assert {k: len(v[0]) for k, v in two.replay.items()} == dict.fromkeys(replay, 4)
    assert len(two.x) == 8
