"""Paired differences, bootstrap CI and sign test on hand-made cells with known answers."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.driver.compare.stats import (
    PAIRED_COLUMNS,
    bootstrap_ci,
    paired_differences,
    paired_table,
    sign_test_p,
)
from simulator.errors import ConfigError


def _runs(cells: dict[str, dict[tuple[int, str], float]]) -> pd.DataFrame:
    """A runs table from ``{method: {(seed, order): Mem}}``; Gen is 1 - Mem."""
    rows = [
        {"method": m, "seed": s, "order": o, "Mem": v, "Gen": 1.0 - v}
        for m, by_cell in cells.items()
        for (s, o), v in by_cell.items()
    ]
    return pd.DataFrame(rows)


def test_six_cells_all_ahead_by_one():
    cells = [(s, o) for s in range(3) for o in ("random", "reverse")]
    runs = _runs({"a": {c: 2.0 for c in cells}, "b": {c: 1.0 for c in cells}})
    diffs = paired_differences(runs, "a", "b", "Mem")
    assert diffs.tolist() == [1.0] * 6
    assert bootstrap_ci(diffs) == (1.0, 1.0)
    assert sign_test_p(diffs) == pytest.approx(2 * 0.5**6) == 0.03125
    row = paired_table(runs, ["Mem"], baseline="b").iloc[0]
    assert (row["cells"], row["wins"], row["mean_diff"]) == (6, 6, 1.0)
    assert (row["ci_low"], row["ci_high"]) == (1.0, 1.0)
    assert row["p_value"] == pytest.approx(0.03125)


def test_balanced_signs_give_p_one_and_mean_zero():
    diffs = np.array([1.0, -1.0, 1.0, -1.0])
    assert sign_test_p(diffs) == 1.0
    assert diffs.mean() == 0.0
    low, high = bootstrap_ci(diffs)
    assert -1.0 <= low < 0.0 < high <= 1.0


def test_zero_differences_are_dropped_from_the_sign_test():
    # four wins and two ties: the ties are dropped, so p = 2 * 0.5**4, not the 6-cell value
    assert sign_test_p(np.array([0.5, 0.0, 0.2, 0.0, 0.1, 0.3])) == pytest.approx(0.125)
    assert sign_test_p(np.array([0.0, 0.0])) == 1.0
    assert sign_test_p(np.array([])) == 1.0
    # one loss among five non-zero: p = 2 * (1 + 5) / 32
    assert sign_test_p(np.array([1, 1, 1, 1, -1, 0.0])) == pytest.approx(12 / 32)


def test_bootstrap_ci_lies_in_the_data_range_and_is_deterministic():
    diffs = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    low, high = bootstrap_ci(diffs)
    assert 0.1 - 1e-12 <= low < 0.3 < high <= 0.5 + 1e-12
    assert bootstrap_ci(diffs, seed=0) == (low, high)
    noisy = np.random.default_rng(5).normal(size=20)
    assert bootstrap_ci(noisy, seed=1) == bootstrap_ci(noisy, seed=1) != bootstrap_ci(noisy, seed=2)
    narrow = bootstrap_ci(diffs, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_ci(np.array([0.7])) == (0.7, 0.7)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(diffs, level=1.0)


def test_cells_are_paired_by_seed_and_order_and_unshared_cells_are_ignored():
    runs = _runs(
        {
            "a": {(0, "random"): 0.9, (0, "reverse"): 0.5, (1, "random"): 0.8, (2, "random"): 0.1},
            "b": {(1, "random"): 0.6, (0, "reverse"): 0.6, (0, "random"): 0.4, (3, "random"): 0.9},
        }
    )
    diffs = paired_differences(runs, "a", "b", "Mem")
    # sorted by (seed, order): (0, random), (0, reverse), (1, random); seeds 2 and 3 unshared
    assert np.allclose(diffs, [0.5, -0.1, 0.2])
    assert np.allclose(paired_differences(runs, "b", "a", "Mem"), -diffs)


def test_nan_cells_are_left_out():
    runs = _runs({"a": {(0, "x"): 0.9, (1, "x"): math.nan}, "b": {(0, "x"): 0.5, (1, "x"): 0.5}})
    assert np.allclose(paired_differences(runs, "a", "b", "Mem"), [0.4])


def test_a_cell_run_twice_by_one_method_is_an_error():
    runs = pd.concat(
        [_runs({"a": {(0, "x"): 0.9}, "b": {(0, "x"): 0.5}}), _runs({"a": {(0, "x"): 0.7}})]
    )
    with pytest.raises(ValueError, match="more than one run"):
        paired_differences(runs, "a", "b", "Mem")


def test_paired_table_rows_and_columns():
    runs = _runs(
        {
            "a": {(0, "r"): 0.9, (1, "r"): 0.8},
            "b": {(0, "r"): 0.5, (1, "r"): 0.6},
            "c": {(0, "r"): 0.1, (1, "r"): 0.2},
            "d": {(5, "r"): 0.3},  # shares no cell with the others: no rows
        }
    )
    table = paired_table(runs, ["Mem", "Gen"])
    assert (
        list(table.columns)
        == list(PAIRED_COLUMNS)
        == [
            "method",
            "baseline",
            "metric",
            "cells",
            "wins",
            "mean_diff",
            "ci_low",
            "ci_high",
            "p_value",
        ]
    )
    pairs = list(zip(table["method"], table["baseline"], table["metric"], strict=True))
    assert pairs == [(m, b, k) for m in "abc" for b in "abc" if m != b for k in ("Mem", "Gen")]
    ab = table[(table["method"] == "a") & (table["baseline"] == "b")].set_index("metric")
    assert ab.loc["Mem", "mean_diff"] == pytest.approx(0.3)
    assert ab.loc["Gen", "mean_diff"] == pytest.approx(-0.3)
    assert (ab.loc["Mem", "wins"], ab.loc["Gen", "wins"]) == (2, 0)
    against_c = paired_table(runs, ["Mem"], baseline="c")
    assert list(zip(against_c["method"], against_c["baseline"], strict=True)) == [
        ("a", "c"),
        ("b", "c"),
    ]


def test_one_method_gives_an_empty_table_with_the_columns():
    table = paired_table(_runs({"a": {(0, "r"): 0.9}}), ["Mem"])
    assert table.empty and list(table.columns) == list(PAIRED_COLUMNS)


def test_an_unknown_baseline_names_the_known_methods():
    runs = _runs({"a": {(0, "r"): 0.9}, "b": {(0, "r"): 0.5}})
    with pytest.raises(ConfigError, match=r"'zz'.*expected one of a, b"):
        paired_table(runs, ["Mem"], baseline="zz")


def _eta_plans(methods, tmp_path=None):
    from simulator.config import build_config, parse_set

    plans = []
    for i, m in enumerate(methods):
        sets = [f"run.method={m}"] + ([f"run.out={tmp_path / f'{m}-{i}'}"] if tmp_path else [])
        plans.append((f"{m}-{i}", build_config("smoke", parse_set(sets))))
    return plans


def test_grid_eta_costs_each_remaining_run_at_its_methods_mean():
    from simulator.driver.compare.schedule import GridEta

    plans = _eta_plans(("finetune", "smg", "finetune", "smg", "mldg"))
    grid = GridEta(plans, cost_of={"finetune": 1.0, "smg": 4.0, "mldg": 2.5}.get)
    assert grid.eta() is None and "ETA ?" in grid.line()
    grid.done("finetune", 10.0)
    grid.done("smg", 50.0)
    # left: finetune (10), smg (50), mldg (not timed yet: 60 s over 5 units of cost -> 12 s a
    # unit, times its 2.5)
    assert grid.eta() == pytest.approx(90.0)
    grid.skip("mldg")
    assert grid.eta() == pytest.approx(60.0) and "2 run(s) left" in grid.line()


def test_grid_eta_counts_runs_finished_earlier_with_their_recorded_seconds(tmp_path):
    from simulator.driver.compare.grid import _pending
    from simulator.driver.compare.schedule import GridEta
    from simulator.driver.runfolder import MARKER

    plans = _eta_plans(("finetune", "smg", "smg"), tmp_path)
    done = Path(plans[0][1].run.out)
    done.mkdir()
    (done / MARKER).write_text("")
    (done / "metrics.json").write_text(json.dumps({"timings": {"total_seconds": 20.0}}))
    grid = GridEta(plans, parallel=2, cost_of={"finetune": 1.0, "smg": 3.0}.get)
    todo, status = _pending(plans, io.StringIO(), grid)
    assert status == {plans[0][0]: "skipped"} and len(todo) == 2
    # no run timed in this call yet: smg is costed from finetune's recorded 20 s, two at a time
    assert grid.eta() == pytest.approx(2 * 3.0 * 20.0 / 2)


def test_every_methods_relative_cost_is_its_measured_training_time_over_finetunes():
    from server.methods import METHODS

    bench = Path(__file__).resolve().parents[1] / "docs" / "diagnostics" / "bench-methods.json"
    seconds = json.loads(bench.read_text())["training_seconds_projected"]
    assert sorted(seconds) == sorted(METHODS)
    for name, cls in METHODS.items():
        assert cls.relative_cost == round(seconds[name] / seconds["finetune"], 1), name
