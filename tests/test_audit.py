"""The privacy audit of run folders: file access by the wrong process, missing traces, prompt-only
exports, and the data-root bookkeeping of the file-access check."""

import json
from pathlib import Path

import pytest

from simulator.config import ConfigError, build_config, parse_set
from sites.site import Site

#: the engine of these tests: sites in the test's own process, each traced under its own role
INPROCESS = ["runtime.engine=inprocess"]


class PeekingSite(Site):
    """alpha opens one of bravo's data files during its evaluation (what the audit must catch)."""

    def handle(self, op, payload=None, token=None):
        if op == "evaluate" and self.name == "alpha":
            other = Path(self.spec.data_dir).parent / "bravo"
            for f in sorted(other.glob("*.npz"))[:1]:
                f.read_bytes()
        return super().handle(op, payload, token)


def test_a_site_that_opens_another_sites_data_fails_the_audit(tmp_path):
    from simulator.driver import api

    out = tmp_path / "peek"
    cfg = build_config(
        "smoke",
        parse_set(
            [
                *INPROCESS,
                "run.sites=2",
                "run.method=finetune",
                "train.steps_per_stage=2",
                f"run.out={out}",
            ]
        ),
    )
    api.run(cfg, progress=False, site_cls=PeekingSite)
    audit = json.loads((out / "privacy_audit.json").read_text())
    check = next(
        c
        for c in audit["claims"]["structural"]["checks"]
        if c["check"] == "only each site opened its own data"
    )
    assert audit["verdict"] == "fail" and check["verdict"] == "fail"
    assert "site:alpha opened" in check["detail"] and "data of site bravo" in check["detail"]


def test_a_run_whose_site_left_no_trace_fails_the_audit(tmp_path):
    from simulator.driver import api
    from simulator.driver.audit.build import build_audit

    out = tmp_path / "run"
    api.run(
        build_config(
            "smoke",
            parse_set(
                [
                    *INPROCESS,
                    "run.sites=2",
                    "run.method=finetune",
                    "train.steps_per_stage=2",
                    f"run.out={out}",
                ]
            ),
        ),
        progress=False,
    )
    audit = build_audit(out, write=False)
    assert audit["verdict"] == "pass"
    bits = audit["scalar_bits"]
    assert set(bits) == {"alpha", "bravo"}
    assert all(0 < r["total"] <= r["cap"] and r["visits"] == 1 for r in bits.values())
    assert "Scalar budget" in (out / "privacy_audit.md").read_text()
    # a ledger whose site reply lost its count, or whose replies pass the cap, fails
    ledger = out / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    reply = next(i for i, line in enumerate(lines) if '"src": "site:alpha"' in line)
    for tamper in ("drop", "inflate"):
        entry = json.loads(lines[reply])
        if tamper == "drop":
            del entry["bits"]
        else:
            entry["bits"] = 1e9
        ledger.write_text("\n".join([*lines[:reply], json.dumps(entry), *lines[reply + 1 :]]))
        got = build_audit(out, write=False)
        row = next(
            c
            for c in got["claims"]["structural"]["checks"]
            if c["check"] == "scalar budget" and c["scope"] == "alpha"
        )
        assert got["verdict"] == "fail" and row["verdict"] == "fail", tamper
    ledger.write_text("\n".join(lines) + "\n")
    (out / "file_access" / "site-bravo.jsonl").unlink()
    audit = build_audit(out, write=False)
    check = next(
        c
        for c in audit["claims"]["structural"]["checks"]
        if c["check"].startswith("every data-reading")
    )
    assert audit["verdict"] == "fail" and "no trace site-bravo.jsonl" in check["detail"]


def test_prompt_only_mode_exports_nothing_but_prompts_and_scalars(smd_backbone, tmp_path):
    from simulator.driver import api

    out = tmp_path / "prompt-only"
    cfg = build_config(
        "smoke",
        parse_set(
            [
                *INPROCESS,
                "run.sites=2",
                "run.method=smg",
                "train.steps_per_stage=3",
                "privacy.exports=prompt",
                f"run.out={out}",
            ]
        ),
    )
    res = api.run(cfg, progress=False)
    assert res.R[2].max() > 0  # the learner trained on the sites' synthetic images
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    sent = {(e["src"], e["kind"]) for e in ledger if e["src"].startswith("site:")}
    assert {k for _, k in sent} == {"prompt", "metrics"}
    assert not [e for e in ledger if e["kind"] in ("visit", "model")]
    audit = json.loads((out / "privacy_audit.json").read_text())
    check = next(c for c in audit["claims"]["structural"]["checks"] if c["check"] == "export mode")
    assert (
        audit["exports"] == "prompt"
        and check["verdict"] == "pass"
        and "nothing but prompts" in check["detail"]
    )
    with pytest.raises(ConfigError, match="prompt-only"):
        api.plan_run(
            build_config(
                "smoke",
                parse_set(
                    ["run.method=joint", "privacy.allow_non_private=true", "privacy.exports=prompt"]
                ),
            )
        )


def test_creating_the_empty_data_root_is_no_access_but_creating_inside_another_site_is(tmp_path):
    """A site that writes its data first creates the shared root above the site folders (a fresh
    cache does, in CI); that reads nothing. Creating, opening or listing inside another site's
    folder does."""
    from simulator.driver.audit.checks import file_access

    root = tmp_path / "sites"
    ok = [
        {"role": "site:alpha", "path": str(root), "mode": "mkdir"},
        {"role": "site:alpha", "path": str(root / "alpha"), "mode": "mkdir"},
        {"role": "site:alpha", "path": str(root / "alpha" / "case-000.npz"), "mode": "r"},
    ]
    check, rows = file_access(ok, str(root))
    assert check["verdict"] == "pass", check["detail"]
    for bad_mode, word in (("mkdir", "created"), ("r", "opened"), ("list", "listed")):
        check, _ = file_access(
            ok + [{"role": "site:alpha", "path": str(root / "bravo"), "mode": bad_mode}], str(root)
        )
        assert (
            check["verdict"] == "fail"
            and f"site:alpha {word}" in check["detail"]
            and "data of site bravo" in check["detail"]
        )


def test_a_node_that_keeps_its_data_in_a_folder_of_its_own_is_audited_against_that_folder(tmp_path):
    """A deployed node's trace lines name the data folder it watched, which the run's data root (the
    learner's view) does not contain: its opens still count for its site, and an open of another
    site's folder under the same node root still fails."""
    from simulator.driver.audit.checks import file_access
    from simulator.filetrace import read_trace, start_trace, stop_trace

    node_root = tmp_path / "node" / "data"
    (node_root / "alpha").mkdir(parents=True)
    (node_root / "bravo").mkdir()
    (node_root / "alpha" / "x.npz").write_bytes(b"0")
    (node_root / "bravo" / "y.npz").write_bytes(b"0")
    start_trace(tmp_path / "fa" / "site-alpha.jsonl", "site:alpha", [node_root])
    try:
        (node_root / "alpha" / "x.npz").read_bytes()
    finally:
        stop_trace()
    own = read_trace(tmp_path / "fa")
    assert own and all(t["root"] == str(node_root.resolve()) for t in own)
    check, rows = file_access(own, str(tmp_path / "learner-side" / "sites"))
    assert check["verdict"] == "pass" and rows == {("site:alpha", "alpha"): len(own)}
    peek = {**own[0], "path": str((node_root / "bravo" / "y.npz").resolve())}
    check, _ = file_access([*own, peek], str(tmp_path / "learner-side" / "sites"))
    assert check["verdict"] == "fail" and "data of site bravo" in check["detail"]
