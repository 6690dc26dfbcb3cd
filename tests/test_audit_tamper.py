"""An audit that fails when it should: tampered copies of a run folder make ``smg-sim audit``
exit 1, and each read route around the trace is either recorded or named in the audit's limits."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from simulator.config import build_config, parse_set
from simulator.driver.cli import main
from simulator.driver.commands import EXIT_FAILED, EXIT_OK


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One in-process smoke run of two sites (every engine writes the same files)."""
    from simulator.driver import api

    out = tmp_path_factory.mktemp("audited") / "run"
    api.run(
        build_config(
            "smoke",
            parse_set(
                [
                    "runtime.engine=inprocess",
                    "run.sites=2",
                    "run.method=finetune",
                    "train.steps_per_stage=2",
                    f"run.out={out}",
                ]
            ),
        ),
        progress=False,
    )
    return out


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path, lines):
    path.write_text("".join(json.dumps(t) + "\n" for t in lines))


def _audit(folder, *extra) -> int:
    return main(["audit", str(folder), *extra])


def _failed(folder) -> set[str]:
    """The checks the audit ``smg-sim audit`` last wrote into the folder failed."""
    audit = json.loads((folder / "privacy_audit.json").read_text())
    return {c["check"] for c in audit["claims"]["structural"]["checks"] if c["verdict"] == "fail"}


def test_the_untouched_run_passes_without_isolation_unless_isolation_is_required(copy, capsys):
    assert _audit(copy) == EXIT_OK
    assert "verdict: PASS without isolation" in capsys.readouterr().out
    assert _audit(copy, "--require-isolation") == EXIT_FAILED  # every site in the driver's process


def test_a_site_that_writes_outside_its_folder_fails(copy, tmp_path):
    """A write of an image outside the site's data folder (appended after the lines the site
    reported, so its trace is otherwise whole)."""
    trace = copy / "file_access" / "site-alpha.jsonl"
    lines = _lines(trace)
    leak = {**lines[-1], "path": str(tmp_path / "outside" / "slice.png"), "mode": "wb"}
    leak.pop("root", None)
    _write(trace, [*lines, leak])
    assert _audit(copy) == EXIT_FAILED
    assert _failed(copy) == {"sites wrote only inside their own folders"}


def test_a_learner_line_that_claims_a_sites_role_fails(copy):
    trace = copy / "file_access" / "learner.jsonl"
    alpha = _lines(copy / "file_access" / "site-alpha.jsonl")[0]
    _write(trace, [*_lines(trace), {**alpha}])  # a site's line in the learner's file
    assert _audit(copy) == EXIT_FAILED
    assert "trace lines bound to their roles" in _failed(copy)


def test_a_line_of_a_process_not_recorded_for_its_role_fails(copy):
    trace = copy / "file_access" / "driver.jsonl"
    root = os.path.realpath(json.loads((copy / "sites.json").read_text())["data_root"])
    lines = _lines(trace) or [
        {"time": 0.0, "role": "driver", "pid": 1, "path": root, "mode": "list", "root": root}
    ]
    lines[0] = {**lines[0], "pid": 1}  # init: never the driver
    _write(trace, lines)
    assert _audit(copy) == EXIT_FAILED
    assert _failed(copy) == {"trace lines bound to their roles"}


def test_a_line_that_names_another_root_fails(copy, tmp_path):
    trace = copy / "file_access" / "learner.jsonl"
    other = {
        "time": 0.0,
        "role": "learner",
        "pid": json.loads((copy / "runtime.json").read_text())["pid"],
        "start": json.loads((copy / "runtime.json").read_text())["start"],
        "path": str(tmp_path / "elsewhere" / "alpha" / "x.npz"),
        "mode": "r",
        "root": str(tmp_path / "elsewhere"),
    }
    _write(trace, [*_lines(trace), other])
    assert _audit(copy) == EXIT_FAILED
    assert "trace lines name the data root" in _failed(copy)


@pytest.mark.parametrize("how", ["drop", "edit"])
def test_a_site_trace_that_is_not_the_one_the_site_reported_fails(copy, how):
    trace = copy / "file_access" / "site-bravo.jsonl"
    lines = _lines(trace)
    if how == "drop":
        lines = lines[1:]
    else:
        lines[0] = {**lines[0], "path": lines[0]["path"] + ".other"}
    _write(trace, lines)
    assert _audit(copy) == EXIT_FAILED
    assert "site traces whole" in _failed(copy)


def test_a_guard_report_whose_trace_digest_was_changed_fails(copy):
    guard = json.loads((copy / "guard.json").read_text())
    guard["alpha"]["trace_digest"] = guard["alpha"]["trace_digest"] + 1
    (copy / "guard.json").write_text(json.dumps(guard))
    assert _audit(copy) == EXIT_FAILED
    assert _failed(copy) == {"site traces whole"}


# -- read routes around the trace ------------------------------------------------------------
@pytest.fixture
def site_file(tmp_path):
    root = tmp_path / "data"
    (root / "alpha").mkdir(parents=True)
    path = root / "alpha" / "train.npy"
    np.save(path, np.zeros((2, 2), np.float32))
    return root, path


def _traced(tmp_path, root, role, work):
    from simulator.filetrace import read_trace, start_trace, stop_trace

    folder = tmp_path / "trace"
    start_trace(folder / f"{role.replace(':', '-')}.jsonl", role, [root])
    try:
        work()
    finally:
        stop_trace()
    return read_trace(folder)


def _launches(trace):
    from types import SimpleNamespace

    from simulator.driver.audit.processes import launches_check

    return launches_check(SimpleNamespace(trace=trace))


def test_a_learner_that_runs_cat_on_a_site_file_is_recorded_and_fails(tmp_path, site_file):
    root, path = site_file
    trace = _traced(
        tmp_path, root, "learner", lambda: subprocess.run(["cat", str(path)], capture_output=True)
    )
    assert any(t.get("event") == "subprocess.Popen" and "cat" in t["what"] for t in trace)
    assert _launches(trace)["verdict"] == "fail"


def test_a_site_that_calls_libc_fopen_through_ctypes_is_recorded_and_fails(tmp_path, site_file):
    import ctypes

    root, path = site_file

    def work():
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        fh = libc.fopen(str(path).encode(), b"rb")
        if fh:
            libc.fclose(ctypes.c_void_p(fh))

    trace = _traced(tmp_path, root, "site:bravo", work)
    assert any(t.get("event") == "ctypes.dlsym" and t["what"] == "fopen" for t in trace)
    assert _launches(trace)["verdict"] == "fail"


def test_a_hard_link_made_outside_the_root_is_recorded_as_access_to_the_site(tmp_path, site_file):
    from simulator.driver.audit.checks import file_access

    root, path = site_file
    outside = tmp_path / "outside"
    outside.mkdir()
    trace = _traced(tmp_path, root, "learner", lambda: os.link(path, outside / "copy.npy"))
    assert any(t.get("mode") == "link" and t["path"] == os.path.realpath(path) for t in trace)
    verdict, _ = file_access(trace, str(root))
    assert verdict["verdict"] == "fail" and "learner linked" in verdict["detail"]


def test_a_read_by_c_code_leaves_no_line_and_the_audit_names_that_limit(tmp_path, site_file):
    import cv2

    from simulator.driver.audit.processes import LIMITS

    root, _ = site_file
    png = root / "alpha" / "slice.png"
    png.write_bytes(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    trace = _traced(tmp_path, root, "learner", lambda: cv2.imread(str(png)))
    assert not [t for t in trace if t.get("path") == os.path.realpath(png)]
    assert any("OpenCV" in line and "C code" in line for line in LIMITS)
