"""`smg-sim compare` and the notebook that reads its folder."""

import dataclasses
import io
import os

import nbformat
import pandas as pd
from nbclient import NotebookClient

from simulator import api
from simulator.config import build_config, parse_set
from simulator.metrics import METRIC_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_skips_finished_runs_and_the_notebook_shows_the_table(ray_session, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    base = build_config("smoke", parse_set(["run.sites=2"]))
    table, status = api.compare(base, ["finetune", "mldg"], [0], ["random", "reverse"], out)
    assert set(status.values()) == {"ran"} and len(status) == 4
    assert list(table["method"]) == ["finetune", "mldg"] and (table["runs"] == 2).all()
    for k in METRIC_NAMES:
        assert f"{k}_mean" in table and f"{k}_std" in table
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["order"]) == {"random", "reverse"}
    for name in ("compare.csv", "compare.md", "compare_bars.png", "compare_mem_gen.png"):
        assert (out / name).stat().st_size > 0
    # a second call finds every run finished
    _, again = api.compare(base, ["finetune", "mldg"], [0], ["random", "reverse"], out)
    assert set(again.values()) == {"skipped"}
    # the notebook loads the folder and shows the table
    monkeypatch.setenv("SMG_COMPARE_DIR", str(out))
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "compare.ipynb"), as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    text = "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "finetune" in text and "mldg" in text and "image/png" in text


def test_a_failed_run_does_not_stop_the_comparison(tmp_path):
    from simulator.compare import plan_compare, run_compare

    base = build_config("smoke", parse_set(["run.sites=2"]))

    def make(cfg, method, seed, order, folder):
        return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, method=method, seed=seed, order=order,
                                                                out=str(folder)))

    plans = plan_compare(base, ["finetune", "ewc"], [0, 1], ["fixed"], tmp_path, make)
    ran = []

    def fake_run(cfg):
        if cfg.run.method == "ewc" and cfg.run.seed == 0:
            raise RuntimeError("actor died\nThe actor is unavailable")
        ran.append((cfg.run.method, cfg.run.seed))

    log = io.StringIO()
    status = run_compare(plans, fake_run, log)
    assert status == {"finetune-s0-fixed": "ran", "finetune-s1-fixed": "ran", "ewc-s0-fixed": "failed",
                      "ewc-s1-fixed": "ran"}
    assert ("ewc", 1) in ran
    assert "ewc-s0-fixed: FAILED (RuntimeError: The actor is unavailable); continuing" in log.getvalue()


def test_the_tables_give_each_order_its_own_rows(tmp_path):
    import json

    from simulator.compare import summarize
    from simulator.runfolder import MARKER

    def fake_run(method, seed, order, mem):
        folder = tmp_path / "runs" / f"{method}-s{seed}-{order}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"run": {"method": method, "seed": seed, "order": order}}))
        metrics = {k: 0.5 for k in METRIC_NAMES} | {"Mem": mem}
        (folder / "metrics.json").write_text(json.dumps({"order": ["a", "b"], "metrics": metrics}))
        (folder / MARKER).write_text("")

    for seed, (m_rand, m_rev) in enumerate([(0.9, 0.3), (0.7, 0.1)]):
        fake_run("smg", seed, "random", m_rand)
        fake_run("smg", seed, "reverse", m_rev)
    table = summarize(tmp_path)
    assert table["runs"].tolist() == [4] and abs(table["Mem_mean"].iloc[0] - 0.5) < 1e-9
    by_order = pd.read_csv(tmp_path / "compare_by_order.csv")
    assert by_order[["order", "runs"]].values.tolist() == [["random", 2], ["reverse", 2]]
    assert by_order["Mem_mean"].round(6).tolist() == [0.8, 0.2]
    text = (tmp_path / "compare.md").read_text()
    assert "| smg | random | 2 | 0.800 ± 0.141 |" in text and "| smg | reverse | 2 | 0.200 ± 0.141 |" in text
