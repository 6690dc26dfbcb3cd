"""One way into a site: its entry point, the operator's table, no text out, settings it owns.

Each test plays a curious or malicious learner (or another process of the Ray cluster) against a
real site, with a technique that moved private data, or a site's settings, before the site had
one entry point.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from sitekit import OPERATOR_TOKEN, make_site

from server.learner import Learner
from server.methods import method_class
from simulator.config import build_config, parse_set
from simulator.driver.plan import method_hparams
from simulator.messages import make_message
from simulator.payloads import (
    ErrorReply,
    FaultRequest,
    GuardReport,
    PreviewRequest,
    TrainRequest,
    is_error,
)
from simulator.schemas import GUARD_REPORT
from sites.site import Site


def _code(reply) -> str:
    return ErrorReply.from_record(reply).error if is_error(reply) else ""


def _all_text(reply) -> list[str]:
    """Every string a reply carries, in any record."""
    return [
        str(v) for rec in reply.config_records.values() for v in rec.values() if isinstance(v, str)
    ]


@pytest.fixture(scope="module")
def learner():
    cfg = build_config("smoke", parse_set(["run.method=finetune"]))
    return Learner(cfg, method_class("finetune"), method_hparams(cfg, "finetune"), in_channels=1)


# -- the site's surface --------------------------------------------------------------------------
def test_another_ray_process_reaches_only_the_entry_point(ray_session, smoke_spec, learner):
    """Named site actors can be listed from any process of the cluster; what such a process can
    call on one is its entry point (plus Ray's built-ins, out of scope), and through it only the
    learner's operations."""
    import ray

    from server.methods import build_method
    from simulator.driver.engine.ray_actors import RayBackend
    from sites.settings import SiteSettings

    settings = SiteSettings(name="alpha", spec=smoke_spec, device="cpu", torch_threads=1)
    backend = RayBackend(
        {"alpha": settings}, build_method, "smg-sim-probe", OPERATOR_TOKEN, restarts=1
    )
    try:
        found = [
            a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == "site-alpha"
        ]
        actor = ray.get_actor("site-alpha", namespace=found[0]["namespace"])
        methods = {m for m in actor._ray_method_signatures}
        assert methods - {"__init__", "__ray_call__", "__ray_ready__", "__ray_terminate__"} == {
            "handle"
        }
        # 1. the helpers that once returned the raw training set are not methods of the actor
        for name in ("_require_visit", "_tensors", "_data", "train", "visit", "write_preview"):
            with pytest.raises(AttributeError):
                getattr(actor, name).remote()
        # 2. nor are they operations of its entry point
        ray.get(actor.handle.remote("start_visit", learner.visit_message("alpha", 1)))
        for op in ("_require_visit", "_guard", "data", "tensors", "visits", "__class__"):
            assert _code(ray.get(actor.handle.remote(op))) == "unknown-operation"
        # 3. the operator's operations need the operator's token
        preview = PreviewRequest("/tmp/elsewhere", 16, True).to_record("learner", "site:alpha")
        for token in (None, "", "guess", OPERATOR_TOKEN[:-1]):
            reply = ray.get(actor.handle.remote("preview", preview, token))
            assert _code(reply) == "operator-only"
        # 4. a second __init__ through Ray (to rebuild the site with the guard off) is refused
        weaker = dataclasses.replace(settings, guard_mode="off")
        reinit = type(actor).__getattr__(actor, "__init__")  # the actor's, not the handle's
        with pytest.raises(ray.exceptions.RayError):  # Ray cannot run it: the process dies
            ray.get(reinit.remote(weaker, build_method, "mine"))
        for _ in range(100):  # restarted by Ray from its operator's settings, not the caller's
            try:
                reply = ray.get(actor.handle.remote("guard_report"), timeout=30)
                break
            except ray.exceptions.RayActorError:
                time.sleep(0.2)
        assert GuardReport.from_record(reply).mode == "strict"
    finally:
        backend.shutdown()


def test_a_learner_cannot_reach_the_operators_table(smoke_spec, tmp_path):
    """Preview (real images to a folder of the caller's choosing), inspection and fault
    injection are the operator's: a request without the token is refused, however it is made."""
    site = make_site(smoke_spec)
    preview = PreviewRequest(str(tmp_path), 16, True).to_record("learner", "site:alpha")
    assert _code(site.handle("preview", preview)) == "operator-only"
    assert _code(site.handle("preview", preview, token="x")) == "operator-only"
    assert _code(site.handle("inspect")) == "operator-only"
    fault = FaultRequest("visit").to_record("learner", "site:alpha")
    assert _code(site.handle("crash_during", fault)) == "operator-only"
    assert not list(tmp_path.iterdir())
    unoperated = make_site(smoke_spec, token="")  # a site with no operator: no token opens it
    assert _code(unoperated.handle("preview", preview, token="")) == "operator-only"
    # the operator may, and even then a preview holds at most 16 images on the site's own disk
    assert not is_error(site.handle("preview", preview, token=OPERATOR_TOKEN))


def test_malformed_requests_are_refused_with_a_code(smoke_spec, learner):
    site = make_site(smoke_spec)
    bad_kind = learner.evaluate_message()  # an evaluate payload where a visit is expected
    assert _code(site.handle("visit", bad_kind)) == "bad-request"
    assert _code(site.handle("visit", None)) == "bad-request"
    assert _code(site.handle("describe", learner.evaluate_message())) == "bad-request"
    train = TrainRequest(3).to_record("learner", "site:alpha")
    assert _code(site.handle("train", train)) == "no-visit"
    assert _code(site.handle(42)) == "unknown-operation"


# -- no text crosses -----------------------------------------------------------------------------
class TalkativeSite(Site):
    """Trusted code with a bug whose exception text holds a private pixel value and a file path."""

    def handle(self, op, payload=None, token=None):
        if op == "describe":
            pixel = float(self.data.train_x[3, 0, 5, 7])
            try:
                raise ValueError(f"pixel {pixel!r} at /hospital/patient-17.png")
            except ValueError as exc:
                return self._failed(op, exc)
        return super().handle(op, payload, token)


def test_an_exception_leaves_as_a_code_and_its_text_stays_in_the_sites_log(smoke_spec, tmp_path):
    log = tmp_path / "alpha.log"
    site = make_site(smoke_spec, site_cls=TalkativeSite, log_file=str(log))
    pixel = repr(float(site.data.train_x[3, 0, 5, 7]))
    reply = site.handle("describe")
    assert _code(reply) == "internal"
    assert not any(pixel in t or "patient" in t for t in _all_text(reply))
    assert set(reply["config"].keys()) == {"error", "rule", "stopped_kind", "count"}
    assert reply["config"]["count"] == 0
    assert pixel in log.read_text() and "Traceback" in log.read_text()


def test_a_stopped_message_says_only_its_rule_and_kind(smoke_spec, learner, tmp_path):
    """The guard's detail (the refused key's name, its dtype) could carry what the message held:
    only the rule and the kind leave; the log keeps the rest."""
    from test_privacy import LeakySite

    log = tmp_path / "alpha.log"
    site = make_site(smoke_spec, site_cls=LeakySite, log_file=str(log))
    site.how = "pixels in a ConfigRecord string"
    site.handle("start_visit", learner.visit_message("alpha", 1))
    site.handle("train", TrainRequest(2).to_record("learner", "site:alpha"))
    reply = site.handle("finish_visit")
    err = ErrorReply.from_record(reply)
    assert (err.error, err.rule, err.stopped_kind) == ("egress-violation", "schema", "model")
    assert len(json.dumps(_all_text(reply))) < 80 and "undeclared" in log.read_text()


def test_the_guard_report_is_named_counts_only(smoke_spec, learner):
    """Warn mode lets a message go without its offending entries; the report says how many, per
    kind and rule, and nothing of the entries (no key, no detail, no free string)."""
    from test_privacy import LeakySite

    site = make_site(smoke_spec, site_cls=LeakySite, guard_mode="warn")
    site.how = "image under a harmless name"
    site.handle("visit", learner.visit_message("alpha", 1))
    reply = site.handle("guard_report")
    assert set(reply.config_records.keys()) == {"meta", "config"}
    assert _all_text(reply)[-1] == "warn"  # the mode, from its enumeration
    counts = dict(reply["metrics"])
    assert set(counts) <= set(GUARD_REPORT) and counts["violations/model/schema"] >= 1
    # an undeclared name in a report is taken out by the site's own guard (warn mode)
    forged = make_message("metrics", "site:alpha", "learner", metrics={"violations/x/histogram": 1})
    out = site._guard.check(forged, site.schema(metrics=GUARD_REPORT))
    assert "violations/x/histogram" not in out["metrics"].keys()


def test_a_failing_flower_node_says_only_a_code(smoke_spec, tmp_path, monkeypatch):
    """Flower would put the text of a ClientApp's exception into the reply's error reason: the
    ClientApp catches every exception itself."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from simulator.driver.flower import client
    from simulator.flower_calls import call_message

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    ctx = Context(
        run_id=1,
        node_id=5,
        node_config={"settings": str(tmp_path / "missing-patient-17.json")},
        state=RecordDict(),
        run_config={},
    )
    out = client._handle(call_message(5, "describe"), ctx)
    assert not out.has_error() and ErrorReply.from_record(out.content).error == "internal"
    assert "patient" not in json.dumps(_all_text(out.content))


# -- settings the site owns ----------------------------------------------------------------------
def test_the_request_cannot_choose_the_sites_privacy_settings(smoke_spec, learner):
    """DP, the guard and the trace are the site's: a tune request carries no DP field (one that
    adds it is malformed) and a settings check that asks for less is refused."""
    site = make_site(smoke_spec, dp_epsilon=2.0)
    check = site.settings.expected()
    for weaker in (
        dataclasses.replace(check, guard_mode="off"),
        dataclasses.replace(check, guard_mode="record"),
        dataclasses.replace(check, dp_epsilon=0.0),
        dataclasses.replace(check, dp_epsilon=50.0),
    ):
        assert _code(site.handle("check", weaker.to_record("learner", "site:alpha"))) == (
            "refused-setting"
        )
    other = dataclasses.replace(check, spec={**check.spec, "seed": check.spec["seed"] + 1})
    assert (
        _code(site.handle("check", other.to_record("learner", "site:alpha"))) == "settings-differ"
    )
    assert not is_error(site.handle("check", check.to_record("learner", "site:alpha")))
    cfg = build_config("smoke", parse_set(["run.method=smd_replay"]))
    lrn = Learner(cfg, method_class("smd_replay"), method_hparams(cfg, "smd_replay"), 1)
    lrn.backbone_key, lrn.backbone_sha256 = "0" * 16, "0" * 64
    tune = lrn.tune_message("alpha")
    tune["config"]["dp_epsilon"] = 0.0  # the old field: DP off, chosen by the learner
    assert _code(site.handle("tune_prompt", tune)) == "bad-request"
    assert site.settings.dp_epsilon == 2.0 and site._guard.mode == "strict"


def test_a_deployed_nodes_settings_file_is_checked(smoke_spec, tmp_path):
    from simulator.errors import ConfigError
    from sites.settings import SiteSettings

    path = tmp_path / "settings.json"
    good = SiteSettings(name="alpha", spec=smoke_spec)
    good.write(path)
    assert SiteSettings.read(path) == good
    data = json.loads(path.read_text())
    data["guard"] = "off"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"settings.json: unknown key 'guard'"):
        SiteSettings.read(path)
    with pytest.raises(ConfigError, match="guard_mode 'none'"):
        SiteSettings(name="alpha", spec=smoke_spec, guard_mode="none")
    assert np.isfinite(good.dp_clip)
