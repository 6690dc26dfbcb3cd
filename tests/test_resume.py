"""Checkpoints, resume and site faults: an interrupted run ends exactly as one that never
stopped."""

import json
import subprocess
import sys

import pytest

from simulator.config import build_config, parse_set
from simulator.driver import api
from simulator.driver.api import EXIT_DRIVER_KILLED
from simulator.driver.faults import Fault, parse_faults
from simulator.errors import ConfigError, ResumeError

SETS = ["run.sites=3", "run.order=random", "run.seed=7", "run.method=finetune"]


def _cfg(out, *extra):
    return build_config("smoke", parse_set([*SETS, f"run.out={out}", *extra]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted smoke run the interrupted ones must reproduce (in-process: every engine
    gives the same R, and the interrupted runs run through Ray actors)."""
    out = tmp_path_factory.mktemp("ref") / "reference-run"
    api.run(_cfg(out, "runtime.engine=inprocess"), progress=False)
    return out


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())["metrics"]


def _run_until_the_driver_is_killed(out, sets) -> None:
    """``smg-sim run`` in a process of its own whose driver is killed after stage 2 (in-process
    engine: its sites die with it)."""
    cmd = [
        sys.executable,
        "-m",
        "simulator.driver.cli",
        "run",
        "--profile",
        "smoke",
        "--quiet",
        "--no-dashboard",
        "--engine",
        "inprocess",
        "--inject-fault",
        "kill-driver@2",
        *[a for s in sets for a in ("--set", s)],
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == EXIT_DRIVER_KILLED, res.stderr[-2000:]


def test_every_stage_leaves_a_checkpoint(reference):
    latest = (reference / "checkpoint" / "LATEST").read_text().strip()
    assert latest == "stage-003"
    assert sorted(p.name for p in (reference / "checkpoint").iterdir()) == ["LATEST", "stage-003"]
    state = json.loads((reference / "checkpoint" / latest / "state.json").read_text())
    assert state["stage"] == 3 and len(state["R"]) == 4


def test_driver_killed_after_stage_2_then_resumed_gives_identical_results(reference, tmp_path):
    out = tmp_path / "run"
    _run_until_the_driver_is_killed(out, SETS)
    assert not (out / "COMPLETE").exists() and not (out / "R.csv").exists()
    assert (out / "checkpoint" / "LATEST").read_text().strip() == "stage-002"
    api.resume(out, progress=False)
    assert (out / "R.csv").read_bytes() == (reference / "R.csv").read_bytes()
    assert _metrics(out) == _metrics(reference)
    lines = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in lines] == [0, 1, 2, 3]
    with pytest.raises(ResumeError, match="finished run"):
        api.resume(out)


def test_a_site_killed_during_its_evaluation_is_restarted_with_identical_results(
    reference, tmp_path
):
    out = tmp_path / "run"
    api.run(_cfg(out, "runtime.inject_fault=kill-site:bravo@3"), progress=False)
    assert (out / "R.csv").read_bytes() == (reference / "R.csv").read_bytes()
    assert _metrics(out) == _metrics(reference)
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    retried = [e for e in ledger if e.get("retry")]
    assert retried and {e.get("src", e.get("dst")) for e in retried} <= {"site:bravo", "learner"}
    guard = json.loads((out / "guard.json").read_text())
    assert guard["bravo"]["restarts"] == 1 and guard["alpha"]["restarts"] == 0


@pytest.mark.slow  # 80 s: three DP runs, two with a Ray instance; CI runs it after the suite
def test_a_dp_run_killed_then_resumed_or_with_a_killed_site_gives_identical_results(tmp_path):
    """The DP prompt's noise comes from each site's secret over the whole request: a resumed run
    and a restarted site send the same requests and get the same prompts."""
    dp = ["run.method=smd_replay", "privacy.dp_epsilon=4", "train.steps_per_stage=3"]
    ref = tmp_path / "ref"
    api.run(_cfg(ref, "runtime.engine=inprocess", *dp), progress=False)
    out = tmp_path / "killed-driver"
    _run_until_the_driver_is_killed(out, [*SETS, *dp])
    api.resume(out, progress=False)
    assert (out / "R.csv").read_bytes() == (ref / "R.csv").read_bytes()
    killed_site = tmp_path / "killed-site"
    api.run(_cfg(killed_site, "runtime.inject_fault=kill-site:bravo@3", *dp), progress=False)
    assert (killed_site / "R.csv").read_bytes() == (ref / "R.csv").read_bytes()
    smd = json.loads((killed_site / "smd.json").read_text())
    assert all(0 < info["dp_epsilon"] <= 4 + 1e-6 for info in smd["sites"].values())


def test_resume_refuses_other_settings_and_names_the_keys(reference, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "COMPLETE").unlink()
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"]["lr"] = "fast"
    cfg["model"]["colour"] = "blue"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ResumeError, match="cannot read"):
        api.resume(out)
    cfg["train"]["lr"] = 0.5
    del cfg["model"]["colour"]
    del cfg["runtime"]["site_timeout"]  # as a folder from code without that key would hold
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ResumeError, match=r"differently at runtime\.site_timeout"):
        api.resume(out)


def test_a_run_without_a_checkpoint_cannot_resume(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_cfg(tmp_path).to_dict()))
    (tmp_path / "method.json").write_text(
        json.dumps({"hyperparameters": {"lr": 0.001, "weight_decay": 0.0}})
    )
    with pytest.raises(ResumeError, match="no checkpoint"):
        api.resume(tmp_path)


def test_faults_are_checked_against_the_run():
    order = ["alpha", "bravo", "charlie"]
    assert parse_faults("kill-site:bravo@3, kill-driver@2", order) == (
        Fault("kill-site", 3, "bravo"),
        Fault("kill-driver", 2),
    )
    for bad, why in [
        ("kill-site:zulu@1", "not a site of this run"),
        ("kill-driver@4", "out of range"),
        ("explode@1", "not a fault"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_faults(bad, order)


@pytest.mark.slow  # 20-25 s: a CLI run with a Ray instance of its own; CI runs it after the suite
def test_the_dashboard_metrics_show_a_running_run(tmp_path):
    """While a run runs, its stage, step, loss, Dice per site and each site's guard traffic can be
    scraped from Ray's metrics export endpoint, tagged with the run's name.

    The run is a CLI process with its own Ray instance: the session's shared instance has seen
    sites killed on purpose by the fault tests, and once its metrics agent has failed to report
    such an event to the (absent) dashboard it can stop taking metrics.
    """
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "metered-run"
    cmd = [
        sys.executable,
        "-m",
        "simulator.driver.cli",
        "run",
        "--profile",
        "smoke",
        "--quiet",
        "--no-dashboard",
        "--sites",
        "2",
        "--method",
        "finetune",
        "--set",
        "train.steps_per_stage=120",
        "--set",
        f"runtime.metrics_port={port}",
        "--out",
        str(out),
    ]
    # the run's processes hand Ray's agent what they recorded every 2 s (10 s by default)
    env = {**os.environ, "RAY_metrics_report_interval_ms": "2000"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    want = {
        "ray_smg_stage",
        "ray_smg_dice",
        "ray_smg_step",
        "ray_smg_loss",
        "ray_smg_site_messages_total",
        "ray_smg_site_bytes_total",
    }
    seen: dict[str, list[str]] = {}
    scrapes, errors = 0, []
    try:
        while proc.poll() is None and not want <= set(seen):
            # the endpoint is up once Ray has started, and answers slowly while training holds the
            # cores
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20)
                    .read()
                    .decode()
                )
            except OSError as e:
                errors.append(repr(e))
                time.sleep(1)
                continue
            scrapes += 1
            for line in text.splitlines():
                name = line.split("{", 1)[0]
                if name.startswith("ray_smg_") and f'run="{out.name}"' in line:
                    seen.setdefault(name, []).append(line)
            time.sleep(1)
    finally:
        try:
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:  # never leave a run behind
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert (out / "COMPLETE").exists()
    assert want <= set(seen), (sorted(seen), scrapes, errors[-3:])
    assert any('site="alpha"' in x for x in seen["ray_smg_dice"])
    assert any('site="bravo"' in x for x in seen["ray_smg_site_messages_total"])
