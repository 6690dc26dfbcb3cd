import json

import pytest

from simulator.config import Config, ConfigError, build_config, parse_set


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_profiles_load(profile):
    cfg = build_config(profile)
    assert cfg.run.profile == profile
    assert cfg.data.image_size >= 16


def test_smoke_is_smaller_than_quick():
    s, q = build_config("smoke"), build_config("quick")
    assert s.data.image_size < q.data.image_size
    assert s.train.steps_per_stage < q.train.steps_per_stage


def test_set_overrides_and_coerces():
    cfg = build_config(
        "smoke", parse_set(["train.lr=0.01", "runtime.dashboard=true", "data.n_train=5"])
    )
    assert cfg.train.lr == 0.01 and cfg.runtime.dashboard is True and cfg.data.n_train == 5


def test_smg_is_the_default_method():
    assert build_config("smoke").run.method == build_config("quick").run.method == "smg"


def test_config_is_frozen():
    cfg = build_config("smoke")
    with pytest.raises(AttributeError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("train.nope=1", r"unknown key train\.nope.*train\.lr"),
        ("bogus.lr=1", r"unknown config section 'bogus'.*run, data"),
        ("train.lr=abc", r"train\.lr: expected a number"),
        ("data.image_size=8", r"data\.image_size: 8 is out of range; expected 16 <= value <= 512"),
        ("data.benchmark=ct", r"data\.benchmark: 'ct' is not allowed; expected one of phantom"),
        ("runtime.dashboard=maybe", r"runtime\.dashboard: expected true or false"),
        ("train.steps_per_stage=1.5", r"expected an integer"),
    ],
)
def test_bad_values_name_key_and_allowed(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_config("smoke", parse_set([item]))


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["lr0.1"])


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'.*smoke, quick, paper"):
        build_config("huge")


def test_round_trip_through_json(tmp_path):
    cfg = build_config("smoke", parse_set(["run.seed=5"]))
    cfg.write(tmp_path / "config.json")
    again = Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert again == cfg
