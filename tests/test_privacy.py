"""Leaking sites: each tries one way to smuggle real pixels out; the guard catches every one."""

import json
import sys

import cv2
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from server.learner import Learner
from server.methods import build_method
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.messages import arrays, make_message
from sites.blocklist import Blocklist
from sites.egress import EgressGuard, EgressViolation
from sites.site import Site


def _learner(cfg):
    """A learner for ``cfg`` with its method's resolved hyper-parameters."""
    return Learner(cfg, method_hparams(cfg, cfg.run.method), in_channels=1)


def _img(site):
    return site._data.train_x[3, 0]


def _mask(site):
    return site._data.train_y[5, 0]


# name -> what the leaking site adds to its model message (array groups, metrics, config)
LEAKS = {
    "image under a harmless name": lambda s: {"arrays": {"stats": {"histogram": _img(s)}}},
    "flattened image": lambda s: {"arrays": {"stats": {"v": _img(s).ravel()}}},
    "image batch (N, 1, H, W)": lambda s: {"arrays": {"stats": {"v": s._data.test_x[:2]}}},
    "rescaled copy (half size)": lambda s: {"arrays": {"stats": {"v": cv2.resize(_img(s), (16, 16),
                                                                                  interpolation=cv2.INTER_AREA)}}},
    "rescaled copy (double size)": lambda s: {"arrays": {"stats": {"v": cv2.resize(_img(s), (64, 64))}}},
    "cast to uint8": lambda s: {"arrays": {"stats": {"v": np.round(_img(s) * 255).astype(np.uint8)}}},
    "cast to float16": lambda s: {"arrays": {"stats": {"v": _img(s).astype(np.float16)}}},
    "intensity-shifted copy": lambda s: {"arrays": {"stats": {"v": _img(s) * 0.5 + 0.2}}},
    "crop": lambda s: {"arrays": {"stats": {"v": _img(s)[6:26, 4:28].copy()}}},
    "transposed copy": lambda s: {"arrays": {"stats": {"v": _img(s).T.copy()}}},
    "mask as int64": lambda s: {"arrays": {"stats": {"v": _mask(s).astype(np.int64)}}},
    "image hidden among model weights": lambda s: {"weights": {"head.extra_bias": _img(s).ravel()[:1024]}},
    "pixels as many MetricRecord scalars": lambda s: {"metrics": {f"m{i}": float(v) for i, v in
                                                                  enumerate(_img(s).ravel()[:400])}},
    "pixels in a ConfigRecord string": lambda s: {"config": {"note": json.dumps(_img(s).ravel()[:200].tolist())}},
}


class LeakySite(Site):
    """A site whose ``finish_visit`` adds a leak to its model message, after the payload is built."""

    how = ""

    def _emit(self, rd):
        if rd["meta"]["kind"] == "model" and self.how:
            leak = LEAKS[self.how](self)
            for group, named in leak.get("arrays", {}).items():
                rd[group] = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in named.items()})
            for key, value in leak.get("weights", {}).items():
                rd["weights"][key] = Array(np.ascontiguousarray(value))
            for key, value in leak.get("metrics", {}).items():
                rd["metrics"][key] = value
            for key, value in leak.get("config", {}).items():
                rd["config"][key] = value
        return super()._emit(rd)


@pytest.fixture(scope="module")
def learner():
    return _learner(build_config("smoke", parse_set(["run.method=finetune"])))


@pytest.mark.parametrize("how", sorted(LEAKS))
def test_every_leak_is_caught_in_strict_mode(how, smoke_spec, learner):
    site = LeakySite("alpha", smoke_spec, build_method, torch_threads=1, device="cpu")
    site.how = how
    site.start_visit(learner.visit_message("alpha", 1))
    site.train(2)
    with pytest.raises(EgressViolation) as err:
        site.finish_visit()
    assert err.value.site == "alpha" and "privacy guard: site 'alpha' blocked" in str(err.value)
    assert site._guard.violations and site._guard.violations[0].action == "stopped"


def test_warn_mode_blocks_the_entry_and_continues(smoke_spec, learner):
    site = LeakySite("alpha", smoke_spec, build_method, torch_threads=1, device="cpu", privacy_mode="warn")
    site.how = "image under a harmless name"
    site.start_visit(learner.visit_message("alpha", 1))
    site.train(2)
    reply = site.finish_visit()
    assert arrays(reply, "stats") == {} and arrays(reply, "weights")  # leak removed, weights kept
    assert site._guard.violations[0].action == "blocked"


def test_honest_site_has_no_violation(smoke_spec, learner):
    site = Site("alpha", smoke_spec, build_method, torch_threads=1, device="cpu")
    site.visit(learner.visit_message("alpha", 1))
    site.evaluate(learner.evaluate_message())
    assert site._guard.violations == [] and site._guard.checked_messages == 4  # start, train, finish, evaluate


def test_no_false_alarm_on_unrelated_arrays():
    rng = np.random.default_rng(0)
    real = rng.random((6, 1, 32, 32)).astype(np.float32)
    guard = EgressGuard("alpha", Blocklist({"img": real}))
    other = rng.random((4, 32, 32)).astype(np.float32)  # unrelated noise of image shape, in a model message
    guard.check(make_message("model", "site:alpha", "learner", arrays={"w": {"a": other,
                                                                           "b": rng.normal(size=(64, 64))}}))
    assert guard.violations == []


def test_record_mode_lists_exactly_which_images_left(smoke_spec):
    data_guard = Site("alpha", smoke_spec, build_method, device="cpu", privacy_mode="record")._guard
    x = Site("alpha", smoke_spec, build_method, device="cpu")._data.train_x
    data_guard.check(make_message("model", "site:alpha", "learner", arrays={"state": {"buf": x[[2, 7]]}}))
    details = [v.detail for v in data_guard.violations]
    assert any("train_image[2]" in d for d in details) and any("train_image[7]" in d for d in details)


def test_leaking_site_stops_a_run_through_ray(ray_session, tmp_path):
    """Strict mode end to end: the run stops with a line naming site, key and rule."""
    import ray.cloudpickle

    from simulator.driver import api
    from simulator.driver.runfolder import FAILED, MARKER

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    class FlattenLeak(LeakySite):
        how = "flattened image"

    out = tmp_path / "leak"
    cfg = build_config("smoke", parse_set(["run.sites=2", f"run.out={out}"]))
    with pytest.raises(Exception, match=r"privacy guard: site 'alpha' blocked 'stats/v' \(rule (exact|near)"):
        api.run(cfg, progress=False, site_cls=FlattenLeak)
    assert (out / FAILED).exists() and not (out / MARKER).exists()
    assert "privacy guard" in (out / FAILED).read_text()


def test_non_private_reference_fails_its_audit(ray_session, tmp_path, capsys):
    """er_real moves real images out of sites: the audit names which images left which site."""
    from simulator.config import ConfigError
    from simulator.driver import api, cli

    out = tmp_path / "er"
    cfg = build_config("smoke", parse_set(["run.sites=2", "run.method=er_real", f"run.out={out}"]))
    with pytest.raises(ConfigError, match="--allow-non-private"):
        api.plan_run(cfg)
    cfg = build_config("smoke", parse_set(["run.sites=2", "run.method=er_real", f"run.out={out}",
                                           "privacy.allow_non_private=true"]))
    api.run(cfg, progress=False)
    audit = json.loads((out / "privacy_audit.json").read_text())
    assert audit["verdict"] == "fail" and audit["private_method"] is False
    guard_checks = [c for c in audit["claims"]["structural"]["checks"] if c["check"] == "egress guard"]
    alpha = next(c for c in guard_checks if c["scope"] == "alpha")
    assert alpha["verdict"] == "fail" and "state/buffer_x" in alpha["detail"] and "train_image[" in alpha["detail"]
    capsys.readouterr()
    assert cli.main(["audit", str(out)]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out
