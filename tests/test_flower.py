"""The same run as a Flower app: ServerApp and ClientApp in Flower's simulation give the Ray
engine's R."""

import dataclasses
import json

import pytest
from flwr.app import Context, RecordDict

from simulator.config import build_config, parse_set
from simulator.driver import api
from simulator.flower_calls import call_message
from simulator.payloads import ErrorReply, FaultRequest, NodeHello, is_error
from sites.settings import SiteSettings

SETS = [
    "run.sites=2",
    "run.order=reverse",
    "run.seed=3",
    "run.method=finetune",
    "train.steps_per_stage=16",
]


def _cfg(out, *extra):
    return build_config("smoke", parse_set([*SETS, f"run.out={out}", *extra]))


def test_the_three_engines_give_the_same_results(ray_session, tmp_path):
    """The same smoke run in-process, through Ray actors and as a Flower app in Flower's
    simulation: byte-identical R, and the audit of each says what its isolation rests on."""
    from conftest import start_session_ray

    ray_run = api.run(_cfg(tmp_path / "ray"), progress=False)
    local = api.run(_cfg(tmp_path / "inprocess", "runtime.engine=inprocess"), progress=False)
    try:
        flower_run = api.run(_cfg(tmp_path / "flower", "runtime.engine=flower"), progress=False)
    finally:  # Flower's simulation shuts Ray down when it ends; the later tests share the session's
        start_session_ray()
    ref = (tmp_path / "ray" / "R.csv").read_bytes()
    assert (tmp_path / "flower" / "R.csv").read_bytes() == ref
    assert (tmp_path / "inprocess" / "R.csv").read_bytes() == ref
    assert flower_run.metrics == ray_run.metrics == local.metrics
    audit = json.loads((tmp_path / "flower" / "privacy_audit.json").read_text())
    assert audit["verdict"] == "pass"
    # every site opened only its own data, each as its own role, although one ClientApp worker
    # served both
    assert {(r["role"], r["site_data"]) for r in audit["file_access"]} == {
        ("site:alpha", "alpha"),
        ("site:bravo", "bravo"),
    }
    assert (
        audit["isolation"]["verdict"] == "not met"
        and "pools its ClientApp workers" in audit["isolation"]["detail"]
    )
    ray_audit = json.loads((tmp_path / "ray" / "privacy_audit.json").read_text())
    assert ray_audit["isolation"]["verdict"] == "met"
    local_audit = json.loads((tmp_path / "inprocess" / "privacy_audit.json").read_text())
    assert ray_audit["verdict_text"] == "PASS (separate processes; Ray built-ins out of scope)"
    assert audit["verdict_text"] == local_audit["verdict_text"] == "PASS without isolation"
    # the same arrays crossed (a visit is one message under Flower, chunks of steps under Ray);
    # each site's settings were checked, not sent
    assert audit["ledger"]["bytes"] == ray_audit["ledger"]["bytes"]
    kinds = [
        json.loads(line)["kind"]
        for line in (tmp_path / "flower" / "ledger.jsonl").read_text().splitlines()
    ]
    assert kinds.count("check") == 2 and kinds.count("model") == 2 and kinds.count("visit") == 2
    assert "spec" not in kinds and kinds.count("hello") == 1
    sites = {r["actor"]: r for r in audit["placement"]}
    assert sites["site-alpha"]["node_id"].startswith("flower:")
    assert sites["site-alpha"]["node_id"] != sites["site-bravo"]["node_id"]


@pytest.fixture()
def in_a_flower_task():
    """Flower builds messages only inside a run's task; give the ClientApp's handlers one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = {k: getattr(TaskIdentity, f"_{k}", None) for k in ("run_id", "node_id", "task_id")}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    for k, v in saved.items():
        setattr(TaskIdentity, f"_{k}", v)


def _node(tmp_path, spec, **settings):
    """A deployed node's context: its own settings file, named in its node config."""
    own = SiteSettings(name=spec.site, spec=spec, device="cpu", torch_threads=1, **settings)
    path = tmp_path / f"node-{spec.site}" / "settings.json"
    own.write(path)
    return own, Context(
        run_id=1, node_id=5, node_config={"settings": str(path)}, state=RecordDict(), run_config={}
    )


def _error(reply) -> str:
    return ErrorReply.from_record(reply.content).error if is_error(reply.content) else ""


def test_a_flower_node_answers_only_the_sites_learner_operations(
    in_a_flower_task, smoke_spec, tmp_path
):
    """A message naming anything but one of the learner's operations is refused with a code; an
    operator's operation cannot be reached through Flower (the ClientApp holds no token)."""
    from simulator.driver.flower.client import _handle

    _, ctx = _node(tmp_path, smoke_spec)
    for op in ("_data", "_tensors", "__dict__", "spec", "_require_visit", "__init__"):
        assert _error(_handle(call_message(5, op), ctx)) == "unknown-operation"
    fault = FaultRequest("visit").to_record("learner", "site:alpha")
    assert _error(_handle(call_message(5, "crash_during", fault), ctx)) == "operator-only"
    assert _error(_handle(call_message(5, "inspect"), ctx)) == "operator-only"
    assert _error(_handle(call_message(5, "describe"), ctx)) == ""


def test_a_node_says_which_site_it_is(in_a_flower_task, smoke_spec, tmp_path):
    from simulator.driver.flower.client import _handle

    _, ctx = _node(tmp_path, smoke_spec)

    def hello(names):
        msg = call_message(5, "hello", NodeHello(tuple(names)).to_record("learner", "site:*"))
        return dict(_handle(msg, ctx).content["metrics"])

    assert hello(["bravo", "alpha"])["site_index"] == 1
    assert hello(["bravo", "charlie"])["site_index"] == 2  # none of the run's: past the end


def test_a_node_keeps_its_own_settings_and_refuses_a_weaker_request(
    in_a_flower_task, smoke_spec, tmp_path
):
    """The node's data folder, guard and DP are its own; the run checks them: a check asking for a
    weaker guard or no DP is refused (and logged at the site), one expecting other data differs."""
    from simulator.driver.flower.client import _handle

    own_dir = tmp_path / "node-alpha" / "data" / "alpha"
    spec = dataclasses.replace(smoke_spec, data_dir=str(own_dir))
    log = tmp_path / "node-alpha" / "site.log"
    own, ctx = _node(tmp_path, spec, dp_epsilon=2.0, log_file=str(log))

    def check(**change):
        req = dataclasses.replace(own.expected(), **change).to_record("learner", "site:alpha")
        return _error(_handle(call_message(5, "check", req), ctx))

    assert check() == ""
    assert check(guard_mode="off") == "refused-setting"
    assert check(dp_epsilon=0.0) == "refused-setting"
    assert check(dp_epsilon=8.0) == "refused-setting"
    assert check(spec={**own.expected().spec, "image_size": 64}) == "settings-differ"
    assert "refused-setting" in log.read_text()
    _handle(call_message(5, "describe"), ctx)
    assert any(own_dir.iterdir())  # generated data kept on the node's own disk


def test_replies_are_matched_to_their_nodes_not_to_their_arrival_order(in_a_flower_task):
    """Flower's send_and_receive returns replies as they arrive; each must go with its node."""
    from types import SimpleNamespace

    from simulator.driver.engine.flower_nodes import _ask

    class Grid:
        def send_and_receive(self, msgs, timeout):
            return [
                SimpleNamespace(
                    metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id),
                    has_error=lambda: False,
                )
                for m in reversed(list(msgs))
            ]

    msgs = [call_message(n, "ping") for n in (11, 12, 13)]
    got = [r.metadata.src_node_id for r in _ask(Grid(), msgs, 5.0, "node discovery")]
    assert got == [11, 12, 13]


def test_config_from_a_flower_run_config():
    from simulator.driver.flower.server import config_from_run_config
    from simulator.errors import ConfigError

    cfg = config_from_run_config(
        {
            "profile": "smoke",
            "sites": 3,
            "order": "reverse",
            "method": "finetune",
            "seed": 4,
            "benchmark": "",
            "out": "",
            "privacy": "warn",  # what the run expects of every node's guard (checked there)
            "exports": "model",
        }
    )
    assert (cfg.run.profile, cfg.run.sites, cfg.run.order, cfg.run.seed) == (
        "smoke",
        3,
        "reverse",
        4,
    )
    assert (
        cfg.privacy.mode == "warn"
        and cfg.runtime.engine == "flower"
        and cfg.data.benchmark == "phantom"
    )
    with pytest.raises(ConfigError, match="unknown key.*lr"):
        config_from_run_config({"lr": 0.1})


@pytest.mark.slow
def test_a_local_deployment_runs_the_app_with_every_site_in_its_own_supernode(
    ray_session, tmp_path
):
    """`smg-sim flower up` (a SuperLink and two SuperNodes on 127.0.0.1, each with a cache of its
    own), `flwr run` of `smg` against it, the same R as the Ray engine, the SMD backbone sent to
    each node as arrays, an audit that passes with one process per site, and `flower down` stopping
    everything it started."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from simulator.driver.flower import deploy as flower_deploy
    from simulator.smd.cache import cached_digest

    ref = api.run(
        build_config(
            "smoke", parse_set(["run.sites=2", "run.method=smg", f"run.out={tmp_path / 'ray'}"])
        ),
        progress=False,
    )
    try:
        dep_cfg = build_config("smoke", parse_set(["run.sites=2"]))
        state = flower_deploy.up(tmp_path / "dep", dep_cfg)
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.skip(f"the Flower binaries could not start here: {exc}")
    try:
        out = tmp_path / "flower-run"
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "FLWR_HOME": state["flwr_home"],
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        }
        cfg = f"sites=2 order='fixed' profile='smoke' method='smg' out='{out}'"
        res = subprocess.run(
            [f"{bin_dir}/flwr", "run", ".", "smg-local", "--stream", "--run-config", cfg],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert (out / "COMPLETE").exists(), (res.stdout + res.stderr)[-3000:]
    finally:
        stopped = flower_deploy.down(tmp_path / "dep")
    assert len(stopped) == 3
    for p in state["processes"]:
        with pytest.raises(ProcessLookupError):
            os.killpg(p["pgid"], 0)
    assert (out / "R.csv").read_bytes() == (ref.out / "R.csv").read_bytes()
    from simulator.driver.audit.build import build_audit

    in_run = json.loads((out / "privacy_audit.json").read_text())
    assert in_run["verdict"] == "fail"  # the nodes keep their traces; the run folder has none
    audit = build_audit(out, node_traces=[tmp_path / "dep" / "file_access"])
    failed = [c for c in audit["claims"]["structural"]["checks"] if c["verdict"] != "pass"]
    assert audit["verdict"] == "pass" and audit["isolation"]["verdict"] == "met", failed
    assert audit["verdict_text"] == "PASS (separate processes)"
    assert {(r["role"], r["site_data"]) for r in audit["file_access"]} == {
        ("site:alpha", "alpha"),
        ("site:bravo", "bravo"),
    }
    # the backbone reached each node as arrays (its cache was empty), checked by digest and
    # kept there
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    sha = json.loads((out / "smd.json").read_text())["backbone_sha256"]
    for p in state["processes"]:
        if "site" in p:
            offers = [
                e for e in ledger if e["kind"] == "backbone" and e["dst"] == f"site:{p['site']}"
            ]
            assert len(offers) == 1 and offers[0]["config"]["sha256"] == sha
            files = list(Path(p["cache"]).glob("smd/*/backbone.pt"))
            assert len(files) == 1 and cached_digest(files[0]) == sha
            assert Path(p["data_dir"]).is_dir()  # the node's own data folder, from its settings
    nodes = {p["site"]: p["pid"] for p in state["processes"] if "site" in p}
    assert {r["actor"]: r["pid"] for r in audit["placement"] if r["actor"].startswith("site-")} == {
        f"site-{s}": pid for s, pid in nodes.items()
    }  # each site's messages answered under its own SuperNode
