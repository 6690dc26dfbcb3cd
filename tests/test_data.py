"""Benchmarks and user-data readers: mni152, folder, prostate and fundus layouts, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from layouts import make_folder, make_fundus, make_prostate, write_png

from simulator.benchmarks import catalog as benchmarks
from simulator.config import ConfigError, build_config, parse_set
from simulator.driver import cli
from simulator.payloads import SiteSpec
from sites.datasets import build_site_data
from sites.readers import DataError, read_site


def _spec(kind: str, site_dir, size: int = 32, **extra) -> SiteSpec:
    return SiteSpec(
        **{
            "benchmark": kind,
            "site": site_dir.name,
            "site_index": 0,
            "seed": 5,
            "image_size": size,
            "n_train": 8,
            "n_test": 4,
            "data_dir": str(site_dir),
            "target": "auto",
            "test_fraction": 0.25,
            **extra,
        }
    )


# -- mni152 ---------------------------------------------------------------------------------
def test_mni152_reads_the_template_from_nilearn_and_sites_differ():
    from simulator.benchmarks.mni152 import TEMPLATE_FILES, mni152_site, template_dir, usable_slices

    folder = template_dir()
    assert "nilearn" in str(folder) and all((folder / f).is_file() for f in TEMPLATE_FILES.values())
    train_z, test_z = usable_slices()
    assert train_z and test_z and not set(train_z) & set(test_z)
    a = mni152_site(0, 11, 6, 3, 32)
    b = mni152_site(1, 12, 6, 3, 32)
    x, y, tx, ty, acq = a
    assert x.shape == (6, 1, 32, 32) and ty.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert 0.05 < y.mean() < 0.4  # white matter is a sizeable part of the slice
    assert set(np.unique(y)) <= {0, 1} and 0 <= x.min() and x.max() <= 1
    # deterministic by seed; two sites share no image; the deformation changes every case
    assert np.array_equal(mni152_site(0, 11, 6, 3, 32)[0], x)
    assert not any(np.allclose(xi, xj) for xi in x for xj in b[0])
    assert not np.array_equal(y[0], y[1])
    assert acq.family != b[4].family  # a different scanner contrast per site


def test_mni152_public_pool_is_conditioned_and_separate():
    from simulator.benchmarks.mni152 import APPEARANCE_DIM, public_pool

    images, masks, cond = public_pool(1, 6, 32)
    assert images.shape == (6, 1, 32, 32) and cond.shape == (6, APPEARANCE_DIM)
    assert np.isfinite(cond).all() and cond.std(0).max() > 0


# -- benchmark specs --------------------------------------------------------------------------
def test_benchmark_specs_are_checked(tmp_path):
    make_folder(tmp_path / "data")
    cfg = build_config("smoke", parse_set([f"data.benchmark=folder:{tmp_path / 'data'}"]))
    assert cfg.data.benchmark == f"folder:{(tmp_path / 'data').resolve()}"
    assert benchmarks.site_names(cfg.data.benchmark) == ("siteA", "siteB")
    assert benchmarks.default_sites(cfg.data.benchmark) == 2
    for value, pattern in [
        (
            "ct",
            r"data\.benchmark: 'ct' is not allowed; expected one of phantom, mni152, folder:PATH",
        ),
        ("folder", r"folder needs a data folder, as folder:PATH"),
        (f"prostate:{tmp_path / 'nope'}", r"nope: no such folder"),
        ("mni152:/x", r"mni152 is generated and takes no path"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            build_config("smoke", parse_set([f"data.benchmark={value}"]))
    with pytest.raises(
        ConfigError, match=r"data\.target: 'cup' is not allowed for the phantom benchmark"
    ):
        build_config("smoke", parse_set(["data.target=cup"]))
    (tmp_path / "bad name").mkdir()
    with pytest.raises(ConfigError, match="site folder name"):
        benchmarks.site_names(f"folder:{tmp_path}")


# -- the three user layouts --------------------------------------------------------------------
def test_folder_layout_with_and_without_split_folders(tmp_path):
    root = make_folder(tmp_path)
    plain = build_site_data(_spec("folder", root / "siteA"))
    assert plain.train_x.shape[1:] == (1, 32, 32) and len(plain.train_x) + len(plain.test_x) == 8
    assert len(plain.test_x) == 2  # seeded split, 25 %
    assert set(np.unique(plain.train_y)) == {0, 1}
    split = build_site_data(_spec("folder", root / "siteB"))
    assert (len(split.train_x), len(split.test_x)) == (6, 2)  # from train/ and test/
    again = build_site_data(_spec("folder", root / "siteA"))
    assert np.array_equal(again.test_x, plain.test_x)


def test_prostate_layout_keeps_organ_slices_and_splits_by_case(tmp_path):
    root = make_prostate(tmp_path, cases=4)
    for site in ("BIDMC", "HK"):  # lower-case and capitalised segmentation names
        d = build_site_data(_spec("prostate", root / site))
        assert d.description["cases_train"] == 3 and d.description["cases_test"] == 1
        assert len(d.train_x) == 18 and len(d.test_x) == 6  # six organ slices per case
        assert d.train_y.reshape(len(d.train_y), -1).max(1).all()  # every slice holds the organ
        assert 0 <= d.train_x.min() and d.train_x.max() <= 1


def test_fundus_layout_disc_and_cup(tmp_path):
    root = make_fundus(tmp_path)
    disc = build_site_data(_spec("fundus", root / "Domain1"))
    cup = build_site_data(_spec("fundus", root / "Domain1", target="cup"))
    assert disc.channels == 3 and (len(disc.train_x), len(disc.test_x)) == (4, 2)
    assert 0 < cup.train_y.mean() < disc.train_y.mean()  # the cup lies inside the disc
    assert (cup.train_y <= disc.train_y).all()


def test_user_layouts_are_read_inside_site_actors(ray_session, tmp_path):
    from simulator.driver import api

    for kind, root in (
        ("folder", make_folder(tmp_path / "f")),
        ("prostate", make_prostate(tmp_path / "p")),
        ("fundus", make_fundus(tmp_path / "u")),
    ):
        cfg = build_config("smoke", parse_set([f"data.benchmark={kind}:{root}"]))
        record = tmp_path / f"inspect-{kind}"
        report = api.inspect_data(cfg, record=record)
        assert set(report) == set(benchmarks.site_names(cfg.data.benchmark))
        traced = {
            f.name for f in (record / "file_access").iterdir()
        }  # every site's reads were traced
        assert traced == {f"site-{s}.jsonl" for s in report} and (record / "ledger.jsonl").exists()
        for stats, problems in report.values():
            assert problems == [] and stats["problems"] == 0
            assert stats["cases_train"] >= 1 and stats["cases_test"] >= 1 and stats["slices"] >= 4
            assert 0 < stats["foreground_fraction"] < 1
            assert stats["channels"] == (3 if kind == "fundus" else 1)


def test_run_on_a_folder_data_set_passes_the_audit(tmp_path, capsys):
    root = make_folder(tmp_path / "data", sites=("north", "south", "west"), n=8)
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            "--profile",
            "smoke",
            "--benchmark",
            f"folder:{root}",
            "--method",
            "finetune",
            "--order",
            "random",
            "--engine",
            "inprocess",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    sites = json.loads((out / "sites.json").read_text())
    assert sorted(sites["order"]) == ["north", "south", "west"]
    assert sites["data_root"] == str(root.resolve())
    audit = json.loads((out / "privacy_audit.json").read_text())
    assert audit["verdict"] == "pass"
    opens = audit["file_access"]
    assert {r["site_data"] for r in opens} == {
        "north",
        "south",
        "west",
    }  # every site read its own files
    assert all(r["role"] == f"site:{r['site_data']}" for r in opens)


def test_smd_methods_need_a_public_pool_for_user_data(tmp_path):
    root = make_folder(tmp_path)
    code = cli.main(
        [
            "run",
            "--profile",
            "smoke",
            "--benchmark",
            f"folder:{root}",
            "--method",
            "smg",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and not (tmp_path / "r").exists()
    cfg = build_config("smoke", parse_set([f"data.benchmark=folder:{root}", "smd.pool=mni152"]))
    from simulator.driver.api import plan_run

    assert plan_run(cfg).sites == ["siteA", "siteB"]


# -- bad data: one clear error per problem, naming the file ----------------------------------
def _bad_folder(tmp_path, how: str):
    root = make_folder(tmp_path / "data", sites=("siteA",), n=6, split_site=None)
    site = root / "siteA"
    if how == "missing mask":
        (site / "masks" / "case_002.png").unlink()
        return site, r"siteA/images/case_002\.png: no mask; expected .*siteA/masks/case_002\.png"
    if how == "size mismatch":
        write_png(site / "masks" / "case_001.png", np.zeros((20, 20), np.uint8))
        return (
            site,
            r"siteA/masks/case_001\.png: mask is 20x20 but its image case_001\.png is 48x40; "
            r"expected the same size",
        )
    if how == "unreadable":
        (site / "images" / "case_003.png").write_bytes(b"not a png")
        return site, r"siteA/images/case_003\.png: unreadable; expected a PNG file"
    if how == "mask values":
        m = np.zeros((40, 48), np.uint8)
        m[5:9, 5:9] = 7
        write_png(site / "masks" / "case_004.png", m)
        return site, r"siteA/masks/case_004\.png: mask has values \{0, 7\}; expected 0/1 or 0/255"
    if how == "empty site":
        for p in [*(site / "images").iterdir(), *(site / "masks").iterdir()]:
            p.unlink()
        return site, r"siteA: empty site; expected at least two readable cases in the folder layout"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["missing mask", "size mismatch", "unreadable", "mask values", "empty site"]
)
def test_bad_folder_data_is_named(tmp_path, how):
    site, pattern = _bad_folder(tmp_path, how)
    with pytest.raises(DataError, match=pattern):
        read_site("folder", site, 32)
    found = read_site("folder", site, 32, collect=True).problems  # inspect mode gathers instead
    assert len(found) == 1


def test_bad_prostate_and_fundus_data_is_named(tmp_path):
    import nibabel as nib

    root = make_prostate(tmp_path / "p", sites=("RUNMC",), cases=3)
    (root / "RUNMC" / "Case01_segmentation.nii.gz").unlink()
    with pytest.raises(
        DataError,
        match=r"RUNMC/Case01\.nii\.gz: no segmentation; expected "
        r".*RUNMC/Case01_segmentation\.nii\.gz",
    ):
        read_site("prostate", root / "RUNMC", 32)
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)),
        str(root / "RUNMC" / "Case01_segmentation.nii.gz"),
    )
    with pytest.raises(
        DataError,
        match=r"Case01_segmentation\.nii\.gz: segmentation has shape \(8, 8, 4\) "
        r"but Case01\.nii\.gz has \(48, 40, 10\)",
    ):
        read_site("prostate", root / "RUNMC", 32)
    (root / "RUNMC" / "Case02.nii.gz").write_bytes(b"garbage")
    found = read_site("prostate", root / "RUNMC", 32, collect=True).problems
    assert len(found) == 2 and any("Case02.nii.gz: unreadable" in p for p in found)

    froot = make_fundus(tmp_path / "u", domains=1)
    mask = froot / "Domain1" / "train" / "ROIs" / "mask" / "g0000.png"
    write_png(mask, np.full((48, 48), 60, np.uint8))
    with pytest.raises(
        DataError,
        match=r"g0000\.png: mask has values \{60\}; expected grey levels 0 \(cup\), "
        r"128 \(disc\) and 255 \(background\)",
    ):
        read_site("fundus", froot / "Domain1", 32)


def test_bad_data_stops_a_run_with_the_file_named_and_inspect_lists_it(
    ray_session, tmp_path, capsys
):
    site, _ = _bad_folder(tmp_path, "missing mask")
    root = site.parent
    make_folder(root, sites=("siteB",), n=6, split_site=None)
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            "--profile",
            "smoke",
            "--benchmark",
            f"folder:{root}",
            "--method",
            "finetune",
            "--out",
            str(out),
            "--engine",
            "inprocess",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    # the run names the site, the code and the site's own log; the file is named there only
    assert "smg-sim: data error: site 'siteA'" in err and "data-error" in err, err
    assert "case_002.png" not in err and "Traceback" not in err
    log = site / ".smg-sim-logs" / "run.log"
    assert str(log) in err and "case_002.png: no mask" in log.read_text()
    failed = (out / "FAILED").read_text()
    assert str(log) in failed and str(out / "traceback.txt") in failed
    assert "SiteFailure" in (out / "traceback.txt").read_text()  # the driver's, kept for the user
    code = cli.main(["data", "inspect", f"folder:{root}", "--profile", "smoke"])
    text = capsys.readouterr().out
    assert code == 1
    assert (
        "siteA: problem:" in text and "case_002.png: no mask" in text and "1 problems found" in text
    )


def test_smd_pretraining_pool_follows_the_benchmark(tmp_path):
    from simulator.benchmarks.mni152 import APPEARANCE_DIM
    from simulator.smd.pretrain import pool_name, smd_spec

    mni = build_config("smoke", parse_set(["data.benchmark=mni152"]))
    assert pool_name(mni) == "mni152"
    spec = smd_spec(mni, 1)
    assert spec.benchmark == "mni152" and spec.cond_dim == APPEARANCE_DIM
    assert spec.key() != smd_spec(build_config("smoke"), 1).key()
    fundus = build_config(
        "smoke", parse_set([f"data.benchmark=fundus:{make_fundus(tmp_path)}", "smd.pool=mni152"])
    )
    with pytest.raises(ConfigError, match="single-channel but the sites' images have 3 channels"):
        smd_spec(fundus, 3)


def test_previews_of_real_data_need_consent_and_stay_in_the_site_folder(ray_session, tmp_path):
    from simulator.driver import api

    root = make_folder(tmp_path / "f")
    cfg = build_config("smoke", parse_set([f"data.benchmark=folder:{root}"]))
    with pytest.raises(ConfigError, match="--allow-real-previews"):
        api.write_site_previews(cfg, None, record=tmp_path / "r0")
    paths, record = api.write_site_previews(cfg, None, allow_real=True, record=tmp_path / "r1")
    assert [p.parent for p in paths] == [root / "siteA", root / "siteB"] and all(
        p.exists() for p in paths
    )
    ledger = [json.loads(x) for x in (record / "ledger.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in ledger].count("preview") == 2
    trace = [
        json.loads(x)
        for f in sorted((record / "file_access").iterdir())
        for x in f.read_text().splitlines()
    ]
    assert {(t["role"], Path(t["path"]).name) for t in trace if t["mode"] == "preview"} == {
        ("site:siteA", "siteA.png"),
        ("site:siteB", "siteB.png"),
    }
    with pytest.raises(ConfigError, match="--out is needed"):
        api.write_site_previews(build_config("smoke"), None, record=tmp_path / "r2")
