"""The command line: bad input fails cleanly, and one end-to-end run through Ray actors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from simulator.driver import cli
from simulator.driver.runfolder import MARKER


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "simulator.driver.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sites", "0"], "--sites must be >= 1, got 0"),
        (["--sites", "3", "--order", "alpha,bravo"], "--order lists 2 sites but --sites is 3"),
        (["--order", "alpha,nowhere"], "unknown site name 'nowhere'; known sites: alpha"),
        (["--set", "train.bogus=1"], "unknown key train.bogus"),
        (["--set", "data.image_size=3"], "data.image_size: 3 is out of range"),
        (["--method", "magic"], "unknown method 'magic'; known methods: er_real, ewc, finetune"),
        (
            ["--benchmark", "ct"],
            "data.benchmark: 'ct' is not allowed; expected one of phantom, mni152",
        ),
        (["--benchmark", "prostate:/no/such/folder"], "/no/such/folder: no such folder"),
        (["--benchmark", "fundus"], "fundus needs a data folder, as fundus:PATH"),
    ],
)
def test_bad_input_one_line_no_traceback_no_folder(tmp_path, capsys, args, message):
    """In-process (the same entry point as the console script; one case below runs it as a
    process)."""
    out = tmp_path / "run"
    code = cli.main(["run", "--profile", "smoke", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_input_from_the_console_entry_point_is_one_line(tmp_path):
    out = tmp_path / "run"
    res = run_cli(
        "run", "--profile", "smoke", "--out", str(out), "--sites", "3", "--order", "alpha,bravo"
    )
    assert res.returncode == 2 and "--order lists 2 sites but --sites is 3" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_unknown_profile_is_rejected(tmp_path):
    res = run_cli("run", "--profile", "huge", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "invalid choice: 'huge'" in res.stderr


def test_existing_run_folder_is_not_touched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "R.csv").write_text("precious\n")
    res = run_cli("run", "--profile", "smoke", "--out", str(out))
    assert res.returncode == 2 and "already exists" in res.stderr
    assert (out / "R.csv").read_text() == "precious\n"


def test_help_explains_every_option():
    res = run_cli("run", "--help")
    for opt in ("--sites", "--order", "--method", "--profile", "--seed", "--out", "--set"):
        assert opt in res.stdout


def test_end_to_end_smoke_run_through_ray(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            "--profile",
            "smoke",
            "--sites",
            "6",
            "--order",
            "random",
            "--seed",
            "3",
            "--method",
            "finetune",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "Mem" in err and "BWT" in err
    for name in (
        "config.json",
        "R.csv",
        "stages.jsonl",
        "metrics.json",
        "R.png",
        "mem_gen.png",
        "ledger.jsonl",
        "sites.json",
        "weights.npz",
        MARKER,
    ):
        assert (out / name).exists(), name
    df = pd.read_csv(out / "R.csv")
    order = json.loads((out / "sites.json").read_text())["order"]
    assert list(df.columns) == ["stage", "visited", *order] and len(df) == 7
    assert sorted(order) == ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    R = df[order].to_numpy()
    assert ((R >= 0) & (R <= 1)).all()
    # training helps the site just visited
    assert np.mean([R[i, i - 1] for i in range(1, 7)]) > R[0].mean() + 0.2
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"Mem", "Gen", "Final", "BWT", "FWT", "Forgetting", "LA", "Retention"}
    from simulator.provenance import code_digest

    prov = json.loads((out / "provenance.json").read_text())["sessions"]
    assert len(prov) == 1 and prov[0]["code_digest"] == code_digest()
    assert {"version", "python", "torch", "cuda", "device", "packages", "git"} <= set(prov[0])
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stages] == list(range(7))
    # where the seconds went: every phase is named, training and evaluation took time, each stage
    # has its own
    from simulator.driver.phases import PHASES

    timings = json.loads((out / "metrics.json").read_text())["timings"]
    assert set(timings["phases"]) == set(PHASES)
    assert timings["phases"]["training"] > 0 and timings["phases"]["evaluation"] > 0
    assert sum(timings["phases"].values()) <= timings["total_seconds"] + 1e-6
    assert all(s["phases"].get("evaluation", 0) > 0 for s in stages)
    assert (
        all(s["phases"].get("training", 0) > 0 for s in stages[1:])
        and "training" not in stages[0]["phases"]
    )
    assert (out / "timings.png").stat().st_size > 0
    # every ledger line from a site is of an egress kind; no site message carries pixels
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    from_sites = [e for e in ledger if e["src"].startswith("site:")]
    assert from_sites and {e["kind"] for e in from_sites} <= {"model", "metrics"}
    for e in from_sites:
        for a in e["arrays"]:
            assert a["shape"][-2:] != [32, 32]
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == 3
    # the privacy audit passes, and `smg-sim audit` agrees from the files alone
    audit = json.loads((out / "privacy_audit.json").read_text())
    assert audit["verdict"] == "pass" and audit["claims"]["formal"]["verdict"] == "none"
    opens = audit["file_access"]
    assert opens and all(r["role"] == f"site:{r['site_data']}" for r in opens)
    assert {r["site_data"] for r in opens} == set(order)
    assert cli.main(["audit", str(out)]) == 0


def test_smd_replay_run(smd_replay_run):
    """Prompts are tuned at the sites, replay reaches later visits, fidelity is reported."""
    from simulator.config import build_config

    res, out = smd_replay_run, smd_replay_run.out
    cfg = build_config("smoke")
    smd = json.loads((out / "smd.json").read_text())
    assert smd["backbone_cached"] is True  # the session fixture built it
    assert set(smd["sites"]) == set(res.order)
    for site, info in smd["sites"].items():
        assert info["prompt_values_bytes"] == 4 * cfg.smd.tokens * cfg.smd.token_dim, site
        assert info["prompt_bytes"] < info["prompt_values_bytes"] + 256, site
        assert 0 <= info["tstr_dice_synthetic"] <= 1 and info["tstr_dice_real"] > 0
        assert 0 < info["prompt_steps"] <= info["prompt_steps_planned"] == cfg.smd.prompt_steps, (
            site
        )
    att = smd["attribution"]
    assert 0 <= att["set_accuracy"] <= 1 and att["chance"] == pytest.approx(1 / 2)
    assert (out / "replay_samples.png").stat().st_size > 0
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    prompts = [e for e in ledger if e["kind"] == "prompt"]
    assert len(prompts) == 2 and all(e["src"].startswith("site:") for e in prompts)
    # every site imported the backbone's libraries ahead of its prompt, and said so in one scalar
    preloads = [e for e in ledger if e["scalar_keys"]["metrics"] == ["import_seconds"]]
    assert sorted(e["src"] for e in preloads) == sorted(f"site:{s}" for s in res.order)
    visits = [e for e in ledger if e["kind"] == "visit"]
    replay_keys = [
        sorted(a["key"] for a in v["arrays"] if a["key"].startswith("replay/")) for v in visits
    ]
    first = res.order[0]
    assert replay_keys[0] == [] and replay_keys[1] == [f"replay/{first}/x", f"replay/{first}/y"]
    # nothing a site sent is image-sized, though image-sized replay went in
    for e in ledger:
        if e["src"].startswith("site:"):
            assert all(a["shape"][-2:] != [32, 32] for a in e["arrays"])


def test_bench_times_each_method_at_each_stage_and_applies_set(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(
        [
            "bench",
            "--profile",
            "smoke",
            "--methods",
            "finetune,smg",
            "--stages",
            "1,3",
            "--steps",
            "2",
            "--set",
            "methods.smg.lookahead=2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())["steps"]
    assert sorted((r["method"], r["stage"]) for r in rows) == [
        ("finetune", 1),
        ("finetune", 3),
        ("smg", 1),
        ("smg", 3),
    ]
    assert all(r["seconds_per_step"] > 0 for r in rows)
    assert "x finetune" in capsys.readouterr().out
    # --set reaches bench through the same resolution as a run: a bad value is refused before timing
    assert (
        cli.main(
            [
                "bench",
                "--profile",
                "smoke",
                "--methods",
                "smg",
                "--set",
                "methods.smg.lookahead=-1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "methods.smg.lookahead: -1.0 is out of range" in capsys.readouterr().err


def test_doctor_runs_a_method_on_the_device_and_times_its_step(tmp_path, capsys):
    out = tmp_path / "doctor"
    code = cli.main(["doctor", "--device", "cpu", "--methods", "finetune", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    report = json.loads((out / "doctor.json").read_text())
    assert report["methods"] == [
        {**report["methods"][0], "method": "finetune", "passed": True, "code": "", "log": ""}
    ]
    assert report["steps"][0]["device"] == "cpu" and report["steps"][0]["seconds_per_step"] > 0
    assert "1 of 1 methods pass" in text and (out / "finetune" / "COMPLETE").exists()
    assert cli.main(["doctor", "--methods", "nope"]) == 2
