"""Site-Modulated Diffusion: cache, prompt-only export, seeded sampling, replay shapes."""

import numpy as np
import pytest
import torch
from sitekit import make_site

from server.learner import Learner
from server.methods import method_class
from server.replay import ReplayBank
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.messages import array_groups, arrays, metrics
from simulator.smd.backbone import to_model_space
from simulator.smd.cache import load_backbone
from simulator.smd.pretrain import ensure_backbone, smd_spec
from sites.prompt import tune_prompt


def _learner(cfg):
    """A learner for ``cfg`` with its method's resolved hyper-parameters."""
    return Learner(
        cfg, method_class(cfg.run.method), method_hparams(cfg, cfg.run.method), in_channels=1
    )


@pytest.fixture(scope="module")
def cfg():
    return build_config("smoke", parse_set(["run.method=smd_replay"]))


@pytest.fixture(scope="module")
def backbone(smd_backbone):
    return smd_backbone


def test_cache_is_reused_and_keyed_by_config(cfg, backbone):
    mtime = backbone.stat().st_mtime_ns
    path, cached = ensure_backbone(smd_spec(cfg, 1))
    assert cached and path == backbone and path.stat().st_mtime_ns == mtime
    other = build_config("smoke", parse_set(["smd.pretrain_steps=31"]))
    assert smd_spec(other, 1).key() != smd_spec(cfg, 1).key()


def test_prompt_tuning_changes_only_the_prompt(cfg, backbone, smoke_spec):
    from sites.datasets import build_site_data

    model = load_backbone(backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = build_site_data(smoke_spec)
    prompt, logs = tune_prompt(
        model,
        data.train_x,
        data.train_y,
        steps=4,
        lr=0.05,
        batch=4,
        gen=torch.Generator().manual_seed(0),
    )
    assert prompt.shape == (cfg.smd.tokens, cfg.smd.token_dim) and prompt.dtype == np.float32
    assert not np.allclose(prompt, model.prompt_init.numpy())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"backbone tensor {k} changed during prompt tuning"
    assert logs["prompt_steps"] == 4


def test_prompt_tuning_stops_a_phase_when_the_probe_loss_stops_improving(cfg, backbone, smoke_spec):
    """tol 0 runs every step; a tolerance no step can meet stops each phase at its first check and
    returns the best prompt seen, whose probe loss is the one reported."""
    from sites.datasets import build_site_data
    from sites.prompt import _fixed_loss

    model = load_backbone(backbone)
    data = build_site_data(smoke_spec)

    def tune(tol):
        return tune_prompt(
            model,
            data.train_x,
            data.train_y,
            steps=12,
            lr=0.05,
            batch=4,
            gen=torch.Generator().manual_seed(0),
            candidates=4,
            stop_tol=tol,
            check_every=2,
        )

    _, full = tune(0.0)
    assert full["prompt_steps"] == full["prompt_steps_planned"] == 12 and full["prompt_checks"] == 0
    prompt, early = tune(1.0)  # no loss falls by 100 %: each phase ends at its first check
    assert (
        early["prompt_steps"] == 4
        and early["prompt_steps_planned"] == 12
        and early["prompt_checks"] == 2
    )
    assert early["prompt_loss_final"] <= early["prompt_loss_search"]
    x = to_model_space(data.train_x, data.train_y, model.spec.image_size)[:32]
    assert _fixed_loss(model, x, torch.from_numpy(prompt)[None]) == pytest.approx(
        early["prompt_loss_final"]
    )


def test_seeded_sampling_is_reproducible(backbone):
    model = load_backbone(backbone)
    tok = model.prompt_init
    a = model.sample(tok, 3, 3, torch.Generator().manual_seed(1))
    b = model.sample(tok, 3, 3, torch.Generator().manual_seed(1))
    c = model.sample(tok, 3, 3, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_replay_shapes_and_ranges(cfg, backbone):
    bank = ReplayBank(str(backbone), run_seed=0, per_site=5, steps=3, data_size=32, channels=1)
    bank.add_prompt("alpha", load_backbone(backbone).prompt_init.numpy())
    x, y = bank.replay("alpha")
    assert x.shape == (5, 1, 32, 32) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (5, 1, 32, 32) and y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1}
    with pytest.raises(ValueError, match="expected"):
        bank.add_prompt("bravo", np.zeros((3, 3), np.float32))


def test_site_exports_only_the_prompt_and_scalars(cfg, backbone, smoke_spec):
    site = make_site(smoke_spec)
    learner = _learner(cfg)
    learner.enable_replay(str(backbone), 1)
    reply = site.handle("tune_prompt", learner.tune_message("alpha"))
    assert reply["meta"]["kind"] == "prompt" and array_groups(reply) == ["prompt"]
    assert list(arrays(reply, "prompt")) == ["tokens"]
    learner.absorb_prompt(reply, "alpha")
    fid = site.handle("fidelity", learner.fidelity_message("alpha"))
    assert array_groups(fid) == [] and 0 <= metrics(fid)["tstr_dice_real"] <= 1
    # a visit of the next site carries replay of the earlier one
    learner.visited.append("alpha")
    msg = learner.visit_message("bravo", 2)
    rep = arrays(msg, "replay")
    assert set(rep) == {"alpha/x", "alpha/y"} and rep["alpha/x"].shape[0] == cfg.smd.replay_per_site


def test_backbone_travels_as_arrays_to_a_site_whose_cache_lacks_it(
    cfg, backbone, smoke_spec, tmp_path, monkeypatch
):
    """A site on another machine: its own cache is empty, so the learner sends the backbone as
    arrays; the site keeps it only with the announced key and digest, then tunes against it."""
    from simulator.payloads import BackboneOffer, ErrorReply
    from simulator.smd.cache import backbone_file, cached_digest

    learner = _learner(cfg)
    learner.enable_replay(str(backbone), 1)
    assert learner.backbone_sha256 == cached_digest(backbone)
    monkeypatch.setenv("SMG_SIM_CACHE", str(tmp_path / "node"))  # from here on, the site's machine
    site = make_site(smoke_spec)
    assert (
        metrics(site.handle("has_backbone", learner.backbone_check_message("alpha")))["present"]
        == 0
    )
    missing = site.handle("tune_prompt", learner.tune_message("alpha"))
    assert ErrorReply.from_record(missing).error == "backbone-missing"
    offer = BackboneOffer.from_record(learner.backbone_offer_message("alpha"))
    name = sorted(offer.state)[0]
    tampered = {**offer.state, name: offer.state[name] + 1e-3}
    bad = BackboneOffer(offer.key, offer.sha256, offer.spec, tampered).to_record(
        "learner", "site:alpha"
    )
    assert ErrorReply.from_record(site.handle("install_backbone", bad)).error == "internal"
    with pytest.raises(ValueError, match="16 hexadecimal"):
        backbone_file("../../elsewhere")
    reply = site.handle("install_backbone", learner.backbone_offer_message("alpha"))
    assert metrics(reply)["installed"] == 1 and metrics(reply)["backbone_bytes"] > 0
    path = backbone_file(learner.backbone_key)
    assert path.is_relative_to(tmp_path / "node") and cached_digest(path) == learner.backbone_sha256
    assert (
        metrics(site.handle("has_backbone", learner.backbone_check_message("alpha")))["present"]
        == 1
    )
    assert (
        metrics(site.handle("install_backbone", learner.backbone_offer_message("alpha")))[
            "installed"
        ]
        == 0
    )
    prompt = site.handle("tune_prompt", learner.tune_message("alpha"))
    assert prompt["meta"]["kind"] == "prompt"


def test_only_a_process_that_builds_a_backbone_imports_diffusers():
    """The driver, a learner and a site import no diffusers (seconds of CPU each) until one of them
    builds a backbone."""
    import subprocess
    import sys

    code = (
        "import sys, server.learner, sites.site, simulator.driver.runner, simulator.smd.pretrain\n"
        "before = any(m.split('.')[0] == 'diffusers' for m in sys.modules)\n"
        "from simulator.smd.backbone import SMDBackbone\n"
        "from simulator.config import build_config\n"
        "from simulator.smd.pretrain import smd_spec\n"
        "SMDBackbone(smd_spec(build_config('smoke'), 1))\n"
        "print(before, 'diffusers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
