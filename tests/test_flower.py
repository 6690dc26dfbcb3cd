"""The same run as a Flower app: ServerApp and ClientApp in Flower's simulation give the Ray
engine's R."""

import dataclasses
import json

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from simulator.config import build_config, parse_set
from simulator.driver import api
from simulator.flower_calls import CALL, SITE_CALLS, call_message

SETS = [
    "run.sites=2",
    "run.order=reverse",
    "run.seed=3",
    "run.method=finetune",
    "train.steps_per_stage=16",
]


def _cfg(out, *extra):
    return build_config("smoke", parse_set([*SETS, f"run.out={out}", *extra]))


def test_the_flower_engine_gives_the_ray_engines_results(ray_session, tmp_path):
    from conftest import start_session_ray

    ray_run = api.run(_cfg(tmp_path / "ray"), progress=False)
    try:
        flower_run = api.run(_cfg(tmp_path / "flower", "runtime.engine=flower"), progress=False)
    finally:  # Flower's simulation shuts Ray down when it ends; the later tests share the session's
        start_session_ray()
    assert (tmp_path / "flower" / "R.csv").read_bytes() == (tmp_path / "ray" / "R.csv").read_bytes()
    assert flower_run.metrics == ray_run.metrics
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
    # the same arrays crossed (a visit is one message under Flower, chunks of steps under Ray), and
    # each site's spec went to it as a message of its own
    assert audit["ledger"]["bytes"] == ray_audit["ledger"]["bytes"]
    kinds = [
        json.loads(line)["kind"]
        for line in (tmp_path / "flower" / "ledger.jsonl").read_text().splitlines()
    ]
    assert kinds.count("spec") == 2 and kinds.count("model") == 2 and kinds.count("visit") == 2
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


def test_a_flower_node_answers_only_the_sites_guarded_calls(in_a_flower_task):
    """A message naming anything but a public, guarded site method is refused before any site is
    touched."""
    from simulator.driver.flower.client import _handle

    ctx = Context(
        run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    for method in ("_data", "_tensors", "__dict__", "spec"):
        with pytest.raises(ValueError, match="is not a site call"):
            _handle(call_message(5, method, "alpha"), ctx)
    with pytest.raises(ValueError, match="was not set up on this node"):
        _handle(call_message(5, "describe", "zulu"), ctx)
    assert "describe" in SITE_CALLS and not any(m.startswith("_") for m in SITE_CALLS)


def test_a_node_says_which_site_it_is(in_a_flower_task):
    from simulator.driver.flower.client import _handle

    def hello(node_config):
        ctx = Context(
            run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={}
        )
        msg = call_message(5, "hello", "")
        return _handle(msg, ctx).content[CALL]

    assert int(hello({"partition-id": 2})["partition-id"]) == 2  # a simulated node
    assert hello({"site": "bravo"})["site"] == "bravo"  # a deployed node names its site
    assert isinstance(hello({"site": "bravo"}), ConfigRecord)


def test_a_deployed_node_keeps_its_site_data_where_its_node_config_says(
    in_a_flower_task, smoke_spec, tmp_path
):
    """The server's spec names a data folder; a node with ``data-dir`` in its config uses its own,
    and a node refuses the setup of another site."""
    from simulator.driver.flower.client import SITE_STATE, _handle

    spec = dataclasses.replace(smoke_spec, data_dir=str(tmp_path / "server-side" / "alpha"))
    setup = {"torch_threads": 1, "device": "cpu", "privacy_mode": "strict", "trace": ""}
    own = tmp_path / "node-alpha" / "alpha"
    ctx = Context(
        run_id=1,
        node_id=5,
        node_config={"site": "alpha", "data-dir": str(own)},
        state=RecordDict(),
        run_config={},
    )
    _handle(
        call_message(5, "setup", "alpha", spec.to_record("learner", "site:alpha"), **setup), ctx
    )
    assert json.loads(str(ctx.state[SITE_STATE]["spec"]))["data_dir"] == str(own)
    assert (
        any(own.iterdir()) and not (tmp_path / "server-side").exists()
    )  # generated data kept on the node's disk
    other = Context(
        run_id=1, node_id=6, node_config={"site": "bravo"}, state=RecordDict(), run_config={}
    )
    with pytest.raises(ValueError, match="reached the node of site 'bravo'"):
        _handle(
            call_message(6, "setup", "alpha", spec.to_record("learner", "site:alpha"), **setup),
            other,
        )


def test_replies_are_matched_to_their_nodes_not_to_their_arrival_order(in_a_flower_task):
    """Flower's send_and_receive returns replies as they arrive; each must go with its node."""
    from types import SimpleNamespace

    from simulator.driver.engine.flower import _ask

    class Grid:
        def send_and_receive(self, msgs, timeout):
            return [
                SimpleNamespace(
                    metadata=SimpleNamespace(src_node_id=m.metadata.dst_node_id),
                    has_error=lambda: False,
                )
                for m in reversed(list(msgs))
            ]

    msgs = [call_message(n, "hello", "") for n in (11, 12, 13)]
    assert [r.metadata.src_node_id for r in _ask(Grid(), msgs, 5.0, "node discovery")] == [
        11,
        12,
        13,
    ]


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
            "privacy": "warn",
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
        state = flower_deploy.up(tmp_path / "dep", 2, "phantom")
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
    audit = json.loads((out / "privacy_audit.json").read_text())
    assert audit["verdict"] == "pass" and audit["isolation"]["verdict"] == "met"
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
            assert Path(p["data_dir"]).is_dir()  # the node's own data folder, from its node config
    nodes = {p["site"]: p["pid"] for p in state["processes"] if "site" in p}
    assert {r["actor"]: r["pid"] for r in audit["placement"] if r["actor"].startswith("site-")} == {
        f"site-{s}": pid for s, pid in nodes.items()
    }  # each site's messages answered under its own SuperNode
