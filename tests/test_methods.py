"""Contract tests over the whole method registry."""

import numpy as np
import pytest
import torch

from server.methods import METHODS, build_method, method_class
from simulator.errors import ConfigError
from simulator.messages import arrays, make_message
from simulator.method import Batch, HParam, StageContext, resolve_hparams
from simulator.segmentation import build_model


def _batch(gen, replay_sites=2):
    x = torch.rand((4, 1, 16, 16), generator=gen)
    y = (x > 0.6).float()
    replay = {
        f"s{k}": (
            torch.rand((2, 1, 16, 16), generator=gen),
            (torch.rand((2, 1, 16, 16), generator=gen) > 0.5).float(),
        )
        for k in range(replay_sites)
    }
    return Batch(x, y, replay)


def _run_stage(name, state=None, replay_sites=2, steps=3):
    model = build_model(1, 4, 2, seed=0)
    method = build_method(name, model, resolve_hparams(method_class(name), 1e-2))
    if state is not None:
        method.load_state(state)
    gen = torch.Generator().manual_seed(0)
    ctx = StageContext(
        site="a",
        stage=2,
        steps=steps,
        device=torch.device("cpu"),
        generator=gen,
        replay_sites=[f"s{k}" for k in range(replay_sites)],
    )
    method.begin_stage(ctx)
    before = [p.detach().clone() for p in model.parameters()]
    logs = [method.update(_batch(gen, replay_sites)) for _ in range(steps)]
    method.end_stage()
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return method, logs, changed


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_returns_scalar_logs_and_state_round_trips(name):
    method, logs, changed = _run_stage(name)
    assert changed, f"{name} did not change the weights"
    for log in logs:
        assert log and all(isinstance(v, float) and np.isfinite(v) for v in log.values()), log
        assert "loss" in log
    state = method.export_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    msg = make_message("model", "site:a", "learner", arrays={"state": state})
    back = arrays(msg, "state")
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    # the next stage accepts the state that travelled
    _run_stage(name, state=back)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_runs_at_stage_one_without_replay(name):
    _, logs, changed = _run_stage(name, replay_sites=0)
    assert changed and all(np.isfinite(v) for log in logs for v in log.values())


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: .*finetune.*smg"):
        method_class("nope")


def test_unknown_hyper_parameter_is_refused():
    with pytest.raises(
        ConfigError, match=r"methods\.smg\.alhpa: unknown hyper-parameter; smg has "
    ):
        resolve_hparams(method_class("smg"), 1e-3, {"alhpa": 0.1})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hyper_parameters_are_declared_with_types(name):
    hp = resolve_hparams(method_class(name), 1e-3)
    assert hp["lr"] == 1e-3 and isinstance(hp["weight_decay"], float)
    for p in method_class(name).hyperparameters:
        assert isinstance(hp[p.name], p.type) and p.help, (name, p.name)


def test_hyper_parameters_are_coerced_to_their_declared_type():
    hp = resolve_hparams(method_class("fish"), 1e-3, {"views": "3", "meta_step": "0.25"})
    assert hp["views"] == 3 and isinstance(hp["views"], int) and hp["meta_step"] == 0.25
    with pytest.raises(ConfigError, match=r"methods\.fish\.views: expected an integer, got '2\.5'"):
        resolve_hparams(method_class("fish"), 1e-3, {"views": "2.5"})
    with pytest.raises(ConfigError, match=r"methods\.fish\.meta_step: 2\.0 is out of range"):
        resolve_hparams(method_class("fish"), 1e-3, {"meta_step": 2})


def test_boolean_and_choice_hyper_parameters():
    flag, pick = HParam("flag", False), HParam("mode", "a", choices=("a", "b"))
    assert flag.coerce("m", "true") is True and flag.coerce("m", "0") is False
    assert pick.coerce("m", "b") == "b"
    with pytest.raises(ConfigError, match=r"methods\.m\.flag: expected true or false"):
        flag.coerce("m", "maybe")
    with pytest.raises(
        ConfigError, match=r"methods\.m\.mode: 'c' is not allowed; expected one of a, b"
    ):
        pick.coerce("m", "c")


def test_a_method_refuses_an_unresolved_table():
    with pytest.raises(ConfigError, match="expected resolved hyper-parameters"):
        build_method("smg", build_model(1, 4, 1, seed=0), {"lr": 1e-3})


@pytest.mark.parametrize(
    "name, declared",
    [
        ("smg", {"lookahead", "lambda_gen", "gen_lead", "replay_sites_per_step", "stats_every"}),
        (
            "smg_mem",
            {"lookahead", "lambda_gen", "gen_lead", "replay_sites_per_step", "stats_every"},
        ),
        (
            "smg_gen",
            {"lookahead", "lambda_gen", "gen_lead", "replay_sites_per_step", "stats_every"},
        ),
        ("pga_exact", {"lookahead", "lambda_gen", "gen_lead", "replay_sites_per_step"}),
        ("pga_sym", {"lookahead", "lambda_gen", "gen_lead", "replay_sites_per_step"}),
        ("smd_replay_matched", {"lambda_gen", "replay_sites_per_step", "stats_every"}),
        ("mldg", {"lookahead"}),
        ("fish", {"lookahead", "meta_step", "views"}),
    ],
)
def test_inner_steps_are_declared_in_outer_steps(name, declared):
    assert {p.name for p in method_class(name).hyperparameters} == declared
    with pytest.raises(ConfigError, match=rf"methods\.{name}\.alpha: unknown hyper-parameter"):
        resolve_hparams(method_class(name), 1e-3, {"alpha": 1e-3})
