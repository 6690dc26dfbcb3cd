"""`smg-sim compare` and the notebook that reads its folder."""

import dataclasses
import io
import json
import os
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from simulator.config import Config, build_config, parse_set
from simulator.driver import api
from simulator.driver.compare.stats import PAIRED_COLUMNS
from simulator.errors import ConfigError, RunFolderError
from simulator.metrics import METRIC_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the engine of the tests of comparison logic: sites in the test's own process
INPROCESS = ["runtime.engine=inprocess"]


def test_compare_skips_finished_runs_and_the_notebook_shows_the_table(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    base = build_config("smoke", parse_set([*INPROCESS, "run.sites=2", "train.steps_per_stage=2"]))
    table, status = api.compare(
        base, ["finetune", "mldg"], [0], ["random"], out
    )  # orders: see the tables test
    assert set(status.values()) == {"ran"} and len(status) == 2
    assert list(table["method"]) == ["finetune", "mldg"] and (table["runs"] == 1).all()
    for k in METRIC_NAMES:
        assert f"{k}_mean" in table and f"{k}_std" in table
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 and set(runs["order"]) == {"random"}
    for name in ("compare.csv", "compare.md", "compare_bars.png", "compare_mem_gen.png"):
        assert (out / name).stat().st_size > 0
    # a second call finds every run finished
    _, again = api.compare(base, ["finetune", "mldg"], [0], ["random"], out)
    assert set(again.values()) == {"skipped"}
    # the notebook loads the folder and shows the table
    monkeypatch.setenv("SMG_COMPARE_DIR", str(out))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "compare.ipynb"), as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    text = "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "finetune" in text and "mldg" in text and "image/png" in text


def test_a_failed_run_does_not_stop_the_comparison(tmp_path):
    from simulator.driver.compare.grid import plan_compare, run_compare

    base = build_config("smoke", parse_set(["run.sites=2"]))

    def make(cfg, method, seed, order, folder):
        return dataclasses.replace(
            cfg,
            run=dataclasses.replace(
                cfg.run, method=method, seed=seed, order=order, out=str(folder)
            ),
        )

    plans = plan_compare(base, ["finetune", "ewc"], [0, 1], ["fixed"], tmp_path, make)
    names = {(cfg.run.method, cfg.run.seed): name for name, cfg in plans}
    # cell by cell: every method of a (seed, order) cell before the next cell
    assert [(c.run.seed, c.run.method) for _, c in plans] == [
        (0, "finetune"),
        (0, "ewc"),
        (1, "finetune"),
        (1, "ewc"),
    ]
    for name, cfg in plans:  # the folder is named after the config built for it
        assert cfg.run.out == str(tmp_path / "runs" / name)
    ran = []

    def fake_run(cfg):
        if cfg.run.method == "ewc" and cfg.run.seed == 0:
            raise RuntimeError("actor died\nThe actor is unavailable")
        ran.append((cfg.run.method, cfg.run.seed))

    log = io.StringIO()
    status = run_compare(plans, fake_run, log)
    assert status == {
        names["finetune", 0]: "ran",
        names["finetune", 1]: "ran",
        names["ewc", 0]: "failed",
        names["ewc", 1]: "ran",
    }
    assert names["ewc", 0].startswith("ewc-s0-fixed-")
    assert ("ewc", 1) in ran
    assert (
        f"{names['ewc', 0]}: FAILED (RuntimeError: The actor is unavailable); continuing"
        in log.getvalue()
    )


def _config(method, seed=0, order="fixed", sets=()):
    cfg = build_config("smoke", parse_set(["run.sites=2", *sets]))
    return dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, method=method, seed=seed, order=order)
    )


def test_run_names_carry_a_hash_of_the_settings_but_not_of_seed_or_order():
    from simulator.driver.compare.grid import config_hash, run_name

    name = run_name(_config("smg", 0, "random"))
    assert re.fullmatch(r"smg-s0-random-[0-9a-f]{8}", name)
    assert name.endswith(config_hash(_config("smg")))
    # another seed, order, output folder or runtime: only the seed/order part changes
    assert run_name(_config("smg", 3, "random")) == name.replace("-s0-", "-s3-")
    assert run_name(_config("smg", 0, "a,b")) == name.replace("-random-", "-a-b-")
    other = _config("smg", 0, "random", ["run.out=/elsewhere", "runtime.num_cpus=7"])
    assert run_name(other) == name
    # another learning rate, method hyper-parameter or method: another hash
    assert run_name(_config("smg", 0, "random", ["train.lr=0.0005"])) != name
    assert config_hash(_config("smg", sets=["train.lr=0.0005"])) != config_hash(_config("smg"))
    assert config_hash(_config("smg", sets=["methods.smg.lambda_gen=0.25"])) != config_hash(
        _config("smg")
    )
    assert config_hash(_config("smg", sets=["methods.ewc.lambda_ewc=0.25"])) == config_hash(
        _config("smg")
    )
    assert config_hash(_config("ewc")) != config_hash(_config("smg"))
    # the hash survives the round trip through a run folder's config.json
    cfg = _config("smg", sets=["train.lr=0.0005", "methods.smg.lambda_gen=0.25"])
    assert config_hash(Config.from_dict(json.loads(json.dumps(cfg.to_dict())))) == config_hash(cfg)


def _fake_run(root, method, seed, order, mem, sets=()):
    """A finished run folder as `smg-sim run` leaves it, as far as summarize reads it."""
    from simulator.driver.compare.grid import run_name
    from simulator.driver.runfolder import MARKER

    cfg = _config(method, seed, order, sets)
    folder = root / "runs" / run_name(cfg)
    folder.mkdir(parents=True)
    cfg.write(folder / "config.json")
    metrics = {k: 0.5 for k in METRIC_NAMES} | {"Mem": mem}
    (folder / "metrics.json").write_text(json.dumps({"order": ["a", "b"], "metrics": metrics}))
    (folder / MARKER).write_text("")
    return folder


def test_the_tables_give_each_order_its_own_rows(tmp_path):
    from simulator.driver.compare.grid import config_hash, summarize

    for seed, (m_rand, m_rev) in enumerate([(0.9, 0.3), (0.7, 0.1)]):
        _fake_run(tmp_path, "smg", seed, "random", m_rand)
        _fake_run(tmp_path, "smg", seed, "reverse", m_rev)
    table = summarize(tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv", dtype={"config": str})
    assert (runs["config"] == config_hash(_config("smg"))).all()
    assert [r.endswith(c) for r, c in zip(runs["run"], runs["config"], strict=True)] == [True] * 4
    assert table["runs"].tolist() == [4] and abs(table["Mem_mean"].iloc[0] - 0.5) < 1e-9
    by_order = pd.read_csv(tmp_path / "compare_by_order.csv")
    assert by_order[["order", "runs"]].values.tolist() == [["random", 2], ["reverse", 2]]
    assert by_order["Mem_mean"].round(6).tolist() == [0.8, 0.2]
    text = (tmp_path / "compare.md").read_text()
    assert (
        "| smg | random | 2 | 0.800 ± 0.141 |" in text
        and "| smg | reverse | 2 | 0.200 ± 0.141 |" in text
    )
    # one method: paired.csv has the header only, compare.md says there are no pairs
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert paired.empty and list(paired.columns) == list(PAIRED_COLUMNS)
    assert "## Paired differences" in text and "no pairs" in text


def test_paired_differences_over_seed_and_order_cells(tmp_path):
    from simulator.driver.compare.grid import summarize

    cells = [(s, o) for s in range(3) for o in ("random", "reverse")]
    for i, (seed, order) in enumerate(cells):
        _fake_run(tmp_path, "smg", seed, order, 0.6 + 0.01 * i)
        _fake_run(tmp_path, "finetune", seed, order, 0.4 + 0.01 * i)
    _fake_run(tmp_path, "smg", 9, "random", 0.0)  # no finetune run on this cell: not paired
    summarize(tmp_path, baseline="finetune")
    paired = pd.read_csv(tmp_path / "paired.csv")
    assert list(paired.columns) == list(PAIRED_COLUMNS)
    assert paired["metric"].tolist() == list(METRIC_NAMES)
    assert (paired["method"] == "smg").all() and (paired["baseline"] == "finetune").all()
    mem = paired.set_index("metric").loc["Mem"]
    assert (mem["cells"], mem["wins"]) == (6, 6)
    assert mem["mean_diff"] == pytest.approx(0.2) and mem["ci_low"] == pytest.approx(0.2)
    assert mem["ci_high"] == pytest.approx(0.2) and mem["p_value"] == pytest.approx(0.0312)
    gen = paired.set_index("metric").loc["Gen"]
    assert (gen["cells"], gen["wins"], gen["mean_diff"], gen["p_value"]) == (6, 0, 0.0, 1.0)
    text = (tmp_path / "compare.md").read_text()
    section = text.split("## Paired differences", 1)[1]
    assert "method - baseline" in section and "bootstrap 95 % CI" in section
    assert "sign-test" in section
    assert "| smg | finetune | Mem | 6 | 6 | +0.200 | [+0.200, +0.200] | 0.0312 |" in section
    assert "| smg | finetune | Gen | 6 | 0 | +0.000 | [+0.000, +0.000] | 1 |" in section
    assert "| BWT |" not in section  # the other metrics are in paired.csv only
    # without a baseline, both directions; an unknown baseline names the known methods
    summarize(tmp_path)
    both = pd.read_csv(tmp_path / "paired.csv")
    assert set(zip(both["method"], both["baseline"], strict=True)) == {
        ("smg", "finetune"),
        ("finetune", "smg"),
    }
    with pytest.raises(ConfigError, match=r"'ewc'.*finetune, smg"):
        summarize(tmp_path, baseline="ewc")


def test_runs_of_one_method_with_other_settings_are_not_averaged(tmp_path):
    from simulator.driver.compare.grid import summarize

    _fake_run(tmp_path, "smg", 0, "fixed", 0.6)
    _fake_run(tmp_path, "smg", 1, "fixed", 0.6, ["train.lr=0.0005"])
    with pytest.raises(RunFolderError, match="different settings"):
        summarize(tmp_path)


def test_grid_shares_each_sites_prompt_and_figures_with_identical_results(smd_replay_run, tmp_path):
    """The second order's run takes every site's prompt and replay figures from the first run."""
    out = tmp_path / "cmp"
    base = build_config("smoke", parse_set([*INPROCESS, "run.sites=2", "train.steps_per_stage=2"]))
    _, status = api.compare(base, ["smd_replay"], [0], ["fixed", "reverse"], out)
    assert set(status.values()) == {"ran"}
    first, second = sorted((out / "runs").iterdir(), key=lambda p: "reverse" in p.name)
    assert not (first / "reuse.json").exists()
    reuse = json.loads((second / "reuse.json").read_text())
    assert set(reuse["sites"]) == {"alpha", "bravo"}
    assert {r["from"] for r in reuse["sites"].values()} == {first.name}
    # no site tuned a prompt again in the second run: the ledger shows no prompt message
    ledger = [json.loads(line) for line in (second / "ledger.jsonl").read_text().splitlines()]
    assert not [e for e in ledger if e["kind"] in ("prompt", "tune", "fidelity")]
    # the same run without the shared folder (the session's) gives the same R, byte for byte
    alone = smd_replay_run.out
    assert (alone / "R.csv").read_bytes() == (second / "R.csv").read_bytes()
    smd_alone = json.loads((alone / "smd.json").read_text())["sites"]
    smd_reused = json.loads((second / "smd.json").read_text())["sites"]
    for site in smd_alone:
        assert smd_reused[site]["tstr_ratio"] == pytest.approx(smd_alone[site]["tstr_ratio"])


def test_parallel_compare_runs_each_run_in_its_own_driver_process(ray_session, tmp_path):
    """--max-parallel 2: two driver processes are given the session's Ray to join (their sites
    here in their own processes); a re-run skips both."""
    out = tmp_path / "par"
    base = build_config("smoke", parse_set([*INPROCESS, "run.sites=2", "train.steps_per_stage=2"]))
    log = io.StringIO()
    table, status = api.compare(
        base, ["finetune"], [0, 1], ["fixed"], out, stream=log, max_parallel=2
    )
    assert set(status.values()) == {"ran"} and len(status) == 2
    assert table["runs"].tolist() == [2]
    for name in status:
        job = json.loads((out / "jobs" / f"{name}.json").read_text())
        assert (
            job["config"]["runtime"]["address"] and job["config"]["runtime"]["torch_threads"] == 1
        )
        assert (out / "runs" / name / "COMPLETE").exists()
        assert "done in" in (out / "logs" / f"{name}.log").read_text()
    text = log.getvalue()
    assert text.count(" started (") == 2 and text.count(" finished in ") == 2
    _, again = api.compare(base, ["finetune"], [0, 1], ["fixed"], out, max_parallel=2)
    assert set(again.values()) == {"skipped"}


def test_parallel_scheduler_starts_apart_the_runs_of_one_seed():
    from simulator.driver.compare.schedule import next_job

    queue = [
        (1, "a", _config("finetune", 0)),
        (2, "b", _config("finetune", 0)),
        (3, "c", _config("finetune", 1)),
    ]
    assert next_job(queue, {0}) == 2
    assert next_job(queue, set()) == 0
    assert next_job(queue, {0, 1}) == 0  # nothing apart: the first one


def test_parallel_scheduler_starts_a_cells_costliest_run_first_and_keeps_cells_in_order():
    from simulator.driver.compare.schedule import next_job

    queue = [
        (1, "a", _config("finetune", 0, "random")),
        (2, "b", _config("smg", 0, "random")),
        (3, "c", _config("pga_sym", 0, "reverse")),
        (4, "d", _config("mldg", 1, "random")),
    ]
    assert next_job(queue, set()) == 1  # smg before finetune; pga_sym's cell comes later
    assert next_job(queue, {0}) == 3  # seed 1's only run, apart from the running seed 0
    cost = {"finetune": 5.0, "smg": 1.0, "pga_sym": 1.0, "mldg": 1.0}.get
    assert next_job(queue, set(), cost) == 0


def test_artifact_lock_lets_one_run_make_a_sites_prompt_and_the_others_wait(tmp_path):
    import numpy as np

    from simulator.driver.artifacts import ArtifactCache, SiteArtifacts

    cache = ArtifactCache(tmp_path)
    assert cache.claim("k") and not cache.claim("k")
    assert cache.wait("k", timeout=0.3, poll=0.1) is None  # held, nothing saved yet
    cache.save("k", SiteArtifacts(np.ones((2, 3), np.float32), {"tstr_ratio": 0.9}, "run-a"))
    cache.release("k")
    art = cache.wait("k", timeout=1.0)
    assert art is not None and art.source == "run-a" and art.logs == {"tstr_ratio": 0.9}
    # a lock left by a process that no longer exists is taken over
    (tmp_path / "j.lock").write_text(f"{__import__('socket').gethostname()}:999999999")
    assert cache.claim("j")


def test_runs_of_different_code_are_labelled_and_warned_about(tmp_path, capsys):
    from simulator.driver.compare.grid import summarize

    for seed, digest in enumerate(["a" * 64, "b" * 64, None]):
        folder = _fake_run(tmp_path, "smg", seed, "random", 0.5)
        if digest:
            (folder / "provenance.json").write_text(
                json.dumps({"sessions": [{"code_digest": digest}]})
            )
    table = summarize(tmp_path)
    assert sorted(table["code"]) == ["a" * 12, "b" * 12, "unknown"]
    assert "different versions of the code" in capsys.readouterr().err
    assert "different versions of the code" in (tmp_path / "compare.md").read_text()
    assert set(pd.read_csv(tmp_path / "runs.csv")["code"]) == {"a" * 12, "b" * 12, "unknown"}


def test_a_run_older_than_a_metric_gets_it_from_its_r(tmp_path):
    from simulator.driver.compare.grid import summarize
    from simulator.driver.runfolder import r_frame

    folder = _fake_run(tmp_path, "smg", 0, "random", 0.5)
    old = json.loads((folder / "metrics.json").read_text())
    old["metrics"] = {k: v for k, v in old["metrics"].items() if k not in ("LA", "Retention")}
    (folder / "metrics.json").write_text(json.dumps(old))
    R = np.array([[0.1, 0.1], [0.8, 0.2], [0.6, 0.9]])
    r_frame(R, ["a", "b"]).to_csv(folder / "R.csv", index=False)
    table = summarize(tmp_path)
    assert table["LA_mean"].iloc[0] == pytest.approx(0.85)
    assert table["Retention_mean"].iloc[0] == pytest.approx(0.75)
