"""Leaking sites: each tries one way to smuggle real pixels out; the guard catches every one."""

import base64
import json
import zlib

import cv2
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from sitekit import make_site

from server.learner import Learner
from server.methods import method_class
from simulator.config import ConfigError, build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.errors import SiteFailure
from simulator.messages import arrays, make_message
from simulator.payloads import ErrorReply, PromptReply, TrainRequest, is_error
from simulator.schemas import Schema
from sites.blocklist import Blocklist
from sites.egress import EgressGuard
from sites.site import Site


def _learner(cfg):
    """A learner for ``cfg`` with its method's resolved hyper-parameters."""
    return Learner(
        cfg, method_class(cfg.run.method), method_hparams(cfg, cfg.run.method), in_channels=1
    )


def _img(site):
    return site.data.train_x[3, 0]


def _mask(site):
    return site.data.train_y[5, 0]


def _weight_key(rd):
    return sorted(rd["weights"].keys(), key=lambda k: -rd["weights"][k].numpy().size)[0]


def _set_weight(rd, values, offset=100):
    """Overwrite part of the largest declared weight with ``values`` (same name, shape and
    dtype)."""
    key = _weight_key(rd)
    w = rd["weights"][key].numpy().copy()
    flat = w.reshape(-1)
    flat[offset : offset + len(values)] = values
    rd["weights"][key] = Array(w)


def _put_array(rd, group, key, value):
    if group not in rd.array_records:
        rd[group] = ArrayRecord()
    rd[group][key] = Array(np.ascontiguousarray(value))


# name -> how the leaking site tampers with its model message after the payload is built. The
# first fourteen are the original suite; the rest add encodings no content check can recognise
# (stopped by the schema) and copies at an offset inside declared weights (stopped by the offset
# scan).
LEAKS = {
    "image under a harmless name": lambda s, rd: _put_array(rd, "stats", "histogram", _img(s)),
    "flattened image": lambda s, rd: _put_array(rd, "stats", "v", _img(s).ravel()),
    "image batch (N, 1, H, W)": lambda s, rd: _put_array(rd, "stats", "v", s.data.test_x[:2]),
    "rescaled copy (half size)": lambda s, rd: _put_array(
        rd, "stats", "v", cv2.resize(_img(s), (16, 16), interpolation=cv2.INTER_AREA)
    ),
    "rescaled copy (double size)": lambda s, rd: _put_array(
        rd, "stats", "v", cv2.resize(_img(s), (64, 64))
    ),
    "cast to uint8": lambda s, rd: _put_array(
        rd, "stats", "v", np.round(_img(s) * 255).astype(np.uint8)
    ),
    "cast to float16": lambda s, rd: _put_array(rd, "stats", "v", _img(s).astype(np.float16)),
    "intensity-shifted copy": lambda s, rd: _put_array(rd, "stats", "v", _img(s) * 0.5 + 0.2),
    "crop": lambda s, rd: _put_array(rd, "stats", "v", _img(s)[6:26, 4:28].copy()),
    "transposed copy": lambda s, rd: _put_array(rd, "stats", "v", _img(s).T.copy()),
    "mask as int64": lambda s, rd: _put_array(rd, "stats", "v", _mask(s).astype(np.int64)),
    "image hidden among model weights": lambda s, rd: _put_array(
        rd, "weights", "head.extra_bias", _img(s).ravel()[:1024]
    ),
    "pixels as many MetricRecord scalars": lambda s, rd: [
        rd["metrics"].__setitem__(f"m{i}", float(v)) for i, v in enumerate(_img(s).ravel()[:400])
    ],
    "pixels in a ConfigRecord string": lambda s, rd: rd["config"].__setitem__(
        "note", json.dumps(_img(s).ravel()[:200].tolist())
    ),
    # -- encodings that content matching cannot see: the schema closes their channel -------------
    "base64 of the image bytes in a config string": lambda s, rd: rd["config"].__setitem__(
        "note", base64.b64encode(_img(s).tobytes()).decode()
    ),
    "zlib-compressed image as a uint8 array": lambda s, rd: _put_array(
        rd, "stats", "blob", np.frombuffer(zlib.compress(_img(s).tobytes()), np.uint8)
    ),
    "keyed permutation of the pixels (a cipher)": lambda s, rd: _put_array(
        rd, "stats", "v", _img(s).ravel()[np.random.default_rng(42).permutation(_img(s).size)]
    ),
    "image bytes spelled out in metric names": lambda s, rd: [
        rd["metrics"].__setitem__(f"k{i}_{chunk}", 0.0)
        for i, chunk in enumerate(
            _img(s).tobytes()[:64].hex()[j : j + 16] for j in range(0, 128, 16)
        )
    ],
    "pixels in a record of its own": lambda s, rd: rd.__setitem__(
        "extra", ConfigRecord({"px": ",".join(f"{v:.4f}" for v in _img(s).ravel()[:64])})
    ),
    "weights re-sent as float64 with the image appended": lambda s, rd: rd["weights"].__setitem__(
        _weight_key(rd),
        Array(
            np.concatenate(
                [rd["weights"][_weight_key(rd)].numpy().ravel().astype(np.float64), _img(s).ravel()]
            )
        ),
    ),
    "a message posing as another site": lambda s, rd: rd["meta"].__setitem__("src", "site:bravo"),
    "pixels in an extra meta key": lambda s, rd: rd["meta"].__setitem__(
        "trace", base64.b64encode(_img(s).tobytes()[:512]).decode()
    ),
    # -- values inside a declared weight (right name, shape and dtype): the offset scan ------------
    "pixels written into a declared weight at an offset": lambda s, rd: _set_weight(
        rd, _img(s).ravel()[200:264]
    ),
    "negated pixels inside a declared weight": lambda s, rd: _set_weight(
        rd, -_img(s).ravel()[300:340], 33
    ),
    "an image column inside a declared weight": lambda s, rd: _set_weight(rd, _img(s)[:, 9], 7),
    "mask boundary values inside a declared weight": lambda s, rd: _set_weight(
        rd, _mask(s).ravel()[_boundary(_mask(s)) : _boundary(_mask(s)) + 48].astype(np.float32), 50
    ),
}
#: channels the schema leaves open in model mode (values inside declared weights and metrics that
#: are not exact copies): what is measured and bounded by the audit's capacity table, not
#: caught here
OPEN = {
    "a thumbnail (resampled pixels) inside a declared weight": lambda s, rd: _set_weight(
        rd, cv2.resize(_img(s), (8, 8), interpolation=cv2.INTER_AREA).ravel() * 0.01, 10
    ),
}


def _boundary(mask):
    """An index of the flattened mask where its values change (a run that is not constant)."""
    flat = mask.ravel()
    return int(np.flatnonzero(np.diff(flat.astype(int)))[0]) - 8


class LeakySite(Site):
    """A site whose outgoing model message is tampered with after its payload is built."""

    how = ""

    def _emit(self, rd, schema):
        if rd["meta"]["kind"] == "model" and self.how:
            {**LEAKS, **OPEN}[self.how](self, rd)
        return super()._emit(rd, schema)


def _visit(site, learner):
    """Start a visit, train two steps and finish it: the model reply (or the site's error)."""
    site.handle("start_visit", learner.visit_message("alpha", 1))
    site.handle("train", TrainRequest(2).to_record("learner", "site:alpha"))
    return site.handle("finish_visit")


@pytest.fixture(scope="module")
def learner():
    return _learner(build_config("smoke", parse_set(["run.method=finetune"])))


@pytest.mark.parametrize("how", sorted(LEAKS))
def test_every_leak_is_caught_in_strict_mode(how, smoke_spec, learner):
    site = make_site(smoke_spec, site_cls=LeakySite)
    site.how = how
    reply = _visit(site, learner)
    assert is_error(reply) and ErrorReply.from_record(reply).error == "egress-violation"
    assert arrays(reply, "weights") == {} and set(reply["metrics"].keys()) == set()
    assert site._guard.violations and site._guard.violations[0].action == "stopped"


def test_the_leak_suite_counts_its_techniques():
    assert len(LEAKS) >= 24  # the fourteen of the first suite and at least ten more


@pytest.mark.parametrize("how", sorted(OPEN))
def test_an_open_channel_is_not_caught_and_is_counted_as_open(how, smoke_spec, learner):
    """Transformed values inside a declared weight pass the guard: the audit reports this channel's
    capacity instead (model mode's weights are bounded only by a formal mechanism)."""
    site = make_site(smoke_spec, site_cls=LeakySite)
    site.how = how
    assert not is_error(_visit(site, learner))
    assert site._guard.violations == []


def test_warn_mode_blocks_the_entry_and_continues(smoke_spec, learner):
    site = make_site(smoke_spec, site_cls=LeakySite, guard_mode="warn")
    site.how = "image under a harmless name"
    reply = _visit(site, learner)
    assert arrays(reply, "stats") == {} and arrays(reply, "weights")  # leak removed, weights kept
    assert site._guard.violations[0].action == "blocked"


def test_the_offset_scan_skips_runs_that_identify_nothing():
    """A run of 16 in which one value fills 14 or more places identifies nothing: small statistics
    (an ``ewc`` Fisher quantises to zeros with a stray 1e-6) repeat such runs of real images by
    chance. A run with three values off its most common one is still found, mask edges included."""
    from sites.blocklist import WindowIndex

    rng = np.random.default_rng(0)
    image = rng.random((1, 1, 8, 32)).astype(np.float32)
    image[0, 0, 0, :16] = 0.0
    image[0, 0, 0, 15] = 1e-6  # a flat background with one stray value
    image[0, 0, 1, :16] = 0.0
    image[0, 0, 1, 13:16] = 1.0  # a mask-like edge: three values off the zeros
    index = WindowIndex({"x": image})
    fisher = np.full(40, 1e-7, np.float32)
    fisher[20] = 9e-7  # quantises to the image's first row
    assert index.find(np.roll(fisher, -5)) is None
    edge = np.zeros(40, np.float32)
    edge[10:26] = image[0, 0, 1, :16]
    assert index.find(edge) == 10
    assert index.find(-image[0, 0, 3]) == 0  # a row of real values, negated


def test_honest_site_has_no_violation(smoke_spec, learner):
    site = make_site(smoke_spec)
    site.handle("visit", learner.visit_message("alpha", 1))
    site.handle("evaluate", learner.evaluate_message())
    assert (
        site._guard.violations == [] and site._guard.checked_messages == 4
    )  # start, train, finish, evaluate


def test_no_false_alarm_on_unrelated_arrays():
    rng = np.random.default_rng(0)
    real = rng.random((6, 1, 32, 32)).astype(np.float32)
    guard = EgressGuard("alpha", Blocklist({"img": real}))
    other = rng.random((4, 32, 32)).astype(
        np.float32
    )  # unrelated noise of image shape, in a model message
    schema = Schema(
        "model",
        "site:alpha",
        arrays={"w/a": ((4, 32, 32), "float32"), "w/b": ((64, 64), "float64")},
    )
    guard.check(
        make_message(
            "model",
            "site:alpha",
            "learner",
            arrays={"w": {"a": other, "b": rng.normal(size=(64, 64))}},
        ),
        schema,
    )
    assert guard.violations == []


def test_record_mode_lists_exactly_which_images_left(smoke_spec):
    data_guard = make_site(smoke_spec, guard_mode="record")._guard
    x = make_site(smoke_spec).data.train_x
    schema = Schema("model", "site:alpha", arrays={"state/buf": ((2, 1, 32, 32), "float32")})
    data_guard.check(
        make_message("model", "site:alpha", "learner", arrays={"state": {"buf": x[[2, 7]]}}), schema
    )
    details = [v.detail for v in data_guard.violations]
    assert any("train_image[2]" in d for d in details) and any(
        "train_image[7]" in d for d in details
    )


def test_leaking_site_stops_a_run(tmp_path):
    """Strict mode end to end: the run stops with a line naming site, key and rule."""
    from simulator.driver import api
    from simulator.driver.runfolder import FAILED, MARKER

    class FlattenLeak(LeakySite):
        how = "flattened image"

    out = tmp_path / "leak"
    cfg = build_config(
        "smoke", parse_set(["run.sites=2", "runtime.engine=inprocess", f"run.out={out}"])
    )
    with pytest.raises(SiteFailure, match=r"egress-violation \(rule schema, a model message\)"):
        api.run(cfg, progress=False, site_cls=FlattenLeak)
    assert (out / FAILED).exists() and not (out / MARKER).exists()
    failed = (out / FAILED).read_text()
    assert "egress-violation" in failed and "undeclared" not in failed  # nothing of the message


def test_non_private_reference_fails_its_audit(tmp_path, capsys):
    """er_real moves real images out of sites: the audit names which images left which site."""
    from simulator.driver import api, cli

    out = tmp_path / "er"
    cfg = build_config("smoke", parse_set(["run.sites=2", "run.method=er_real", f"run.out={out}"]))
    with pytest.raises(ConfigError, match="--allow-non-private"):
        api.plan_run(cfg)
    cfg = build_config(
        "smoke",
        parse_set(
            [
                "run.sites=2",
                "run.method=er_real",
                "runtime.engine=inprocess",
                f"run.out={out}",
                "privacy.allow_non_private=true",
            ]
        ),
    )
    api.run(cfg, progress=False)
    audit = json.loads((out / "privacy_audit.json").read_text())
    assert audit["verdict"] == "fail" and audit["private_method"] is False
    guard_checks = [
        c for c in audit["claims"]["structural"]["checks"] if c["check"] == "egress guard"
    ]
    alpha = next(c for c in guard_checks if c["scope"] == "alpha")
    assert alpha["verdict"] == "fail" and "model exact" in alpha["detail"]
    assert "train_image[" not in alpha["detail"]  # which image is said in the site's own log
    capsys.readouterr()
    assert cli.main(["audit", str(out)]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out


def test_warn_mode_removes_only_the_offending_scalars(smoke_spec, learner):
    """A scalar leak in warn mode takes out the undeclared metrics; the weights still go."""
    site = make_site(smoke_spec, site_cls=LeakySite, guard_mode="warn")
    site.how = "pixels as many MetricRecord scalars"
    reply = _visit(site, learner)
    assert arrays(reply, "weights") and not [k for k in reply["metrics"].keys() if k[1:].isdigit()]
    assert {"steps", "train_seconds", "mean_loss"} <= set(reply["metrics"].keys())
    assert {v.rule for v in site._guard.violations} == {"schema"}


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n, c in __import__("server.methods", fromlist=["METHODS"]).METHODS.items()
        if c.private
    ),
)
def test_no_honest_message_of_a_private_method_raises_an_alarm(name, smoke_spec, smd_backbone):
    """Every message a site sends for every private method, at a stage with replay, in strict
    mode."""
    cfg = build_config("smoke", parse_set([f"run.method={name}", "train.steps_per_stage=3"]))
    lrn = _learner(cfg)
    lrn.enable_replay(str(smd_backbone), 1)
    tokens = np.random.default_rng(0).normal(size=(cfg.smd.tokens, cfg.smd.token_dim))
    lrn.absorb_prompt(
        PromptReply(tokens.astype(np.float32), {}).to_record("site:bravo", "learner"), "bravo"
    )
    lrn.visited.append("bravo")
    site = make_site(smoke_spec)
    site.handle("describe")
    lrn.absorb(site.handle("visit", lrn.visit_message("alpha", 2)), "alpha", 2)
    site.handle("evaluate", lrn.evaluate_message())
    site.handle("visit", lrn.visit_message("alpha", 3))  # with the state exported at stage 2
    site.handle("guard_report")
    assert site._guard.violations == [], [(v.key, v.rule, v.detail) for v in site._guard.violations]
