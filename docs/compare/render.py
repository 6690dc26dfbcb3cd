"""The result tables and plots of README.md and the documentation site's results pages,
generated from the files kept under docs/compare/ and docs/runs/.

Four steps, all read-only on the comparison and run folders they read:

``collect NAME COMPARE_DIR [--baseline METHOD]``
    copies what a finished ``smg-sim compare`` folder says into ``docs/compare/NAME/``: its
    ``runs.csv`` (one row per run), ``paired.csv`` (paired differences over (seed, order) cells),
    ``compare.md`` and plots, and for every run its ``R.csv``, ``metrics.json``, ``config.json``
    and ``stages.jsonl`` (small files; weights, ledgers and checkpoints stay behind). ``runs.csv``
    gains the run means of the alignment statistics (``align_rel_change``, ``inner_over_outer``,
    ``align_cos_mem``, ``align_cos_gen``) from the stage log and the run's privacy-audit verdict
    (``audit``: pass, fail, or none without an audit file); each run's ``provenance.json`` is
    copied too.

``run NAME RUN_DIR``
    copies one run's small files (R, metrics, config, stages, smd.json and its plots) into
    ``docs/runs/NAME/``.

``render [FILES...]``
    rewrites every block between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` from
    ``docs/compare/NAME/`` (mean +- std per method, then the paired differences against the
    baseline), every ``<!-- fidelity:NAME -->`` block from ``docs/runs/NAME/smd.json``, and
    every ``<!-- include:PATH -->`` block with a generated Markdown file ``docs/compare/PATH``
    (its title left out), in the files given (default: README.md and every Markdown page under
    ``docs/site/``); a file whose blocks are already true is left untouched.

``site``
    copies the plots of the result folders (the PNG files directly in ``docs/compare/NAME/``,
    ``docs/runs/NAME/`` and ``docs/diagnostics/dp_audit/``) into ``docs/site/results/img/`` as
    ``NAME-FILE.png``, where the documentation's results pages show them (generated at build
    time by ``make docs``, not committed).

Usage: ``.venv/bin/python docs/compare/render.py collect smg_vs_matched /work/grid/phantom-main
--baseline smd_replay_matched`` then ``.venv/bin/python docs/compare/render.py render``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SITE = ROOT / "docs" / "site"
IMAGES = SITE / "results" / "img"
# The folders whose plots the results pages show; one folder's name prefixes its files' names.
IMAGE_FOLDERS = (
    "docs/compare/*",
    "docs/runs/*",
    "docs/diagnostics/dp_audit",
    "docs/sites",
    "docs/sites/mni152",
)
METRICS = ("Mem", "Gen", "Final", "BWT", "FWT", "Forgetting")
PLASTICITY = ("LA", "Retention")  # in runs of releases that measure them
ALIGN = ("align_rel_change", "inner_over_outer", "align_cos_mem", "align_cos_gen")
PAIRED = ("Mem", "Gen", "LA", "Retention", "Final", "BWT")
RUN_FILES = ("R.csv", "metrics.json", "config.json", "stages.jsonl")
COMPARE_FILES = (
    "runs.csv",
    "paired.csv",
    "compare.md",
    "compare.csv",
    "compare_by_order.csv",
    "compare_bars.png",
    "compare_mem_gen.png",
)


def _alignment_means(stages: Path) -> dict[str, float]:
    """Each alignment statistic's mean over the stages that logged it (0 where none did)."""
    rows = [json.loads(line) for line in stages.read_text().splitlines() if line.strip()]
    return {
        k: (sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows))) for k in ALIGN
    }


def _audit(run: Path) -> str:
    """The run's privacy-audit verdict (``pass``, ``fail``), or ``none`` without an audit file."""
    path = run / "privacy_audit.json"
    if not path.exists():
        return "none"
    return str(json.loads(path.read_text()).get("verdict", "none"))


def collect(name: str, source: Path, baseline: str | None) -> Path:
    """Copy a finished comparison's tables and each run's small files into docs/compare/NAME/."""
    source = Path(source)
    if not (source / "runs.csv").exists():
        raise SystemExit(
            f"{source}: no runs.csv; run `smg-sim compare ... --out {source}` to the end first"
        )
    dest = HERE / name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "runs").mkdir(parents=True)
    for f in COMPARE_FILES:
        if (source / f).exists():
            shutil.copy2(source / f, dest / f)
    runs = pd.read_csv(source / "runs.csv")
    align = []
    for run in runs["run"]:
        folder = source / "runs" / run
        (dest / "runs" / run).mkdir()
        for f in RUN_FILES:
            shutil.copy2(folder / f, dest / "runs" / run / f)
        if (folder / "provenance.json").exists():
            shutil.copy2(folder / "provenance.json", dest / "runs" / run / "provenance.json")
        align.append({**_alignment_means(folder / "stages.jsonl"), "audit": _audit(folder)})
    runs = pd.concat([runs, pd.DataFrame(align)], axis=1)
    runs.to_csv(dest / "runs.csv", index=False, float_format="%.4f")
    (dest / "source.json").write_text(
        json.dumps({"compare_folder": str(source), "baseline": baseline}, indent=2) + "\n"
    )
    return dest


def copy_run(name: str, run_dir: Path) -> Path:
    """Copy one run's small files into docs/runs/NAME/."""
    run_dir = Path(run_dir)
    dest = ROOT / "docs" / "runs" / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in (
        *RUN_FILES,
        "smd.json",
        "timings.png",
        "alignment.png",
        "replay_samples.png",
        "R.png",
    ):
        if (run_dir / f).exists():
            shutil.copy2(run_dir / f, dest / f)
    return dest


def _summary(name: str) -> list[str]:
    folder = HERE / name
    runs = pd.read_csv(folder / "runs.csv")
    baseline = json.loads((folder / "source.json").read_text()).get("baseline")
    cols = [*METRICS, *[c for c in (*PLASTICITY, *ALIGN[:2]) if c in runs]]
    lines = ["| method | cells | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method, g in runs.groupby("method", sort=False):
        cells = [
            f"{g[c].mean():+.3f} ± {g[c].std(ddof=1):.3f}"
            if c in ("BWT", "FWT")
            else f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}"
            for c in cols
        ]
        lines.append(f"| {method} | {len(g)} | " + " | ".join(cells) + " |")
    paired = pd.read_csv(folder / "paired.csv")
    if baseline:
        paired = paired[paired["baseline"] == baseline]
    paired = paired[paired["metric"].isin(PAIRED)]
    if not paired.empty:
        lines += [
            "",
            "Paired differences (method minus baseline per (seed, order) cell; bootstrap 95 % CI "
            "of the mean difference; exact two-sided sign-test p):",
            "",
            "| method | baseline | metric | cells | wins | mean diff | 95 % CI | p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, r in paired.iterrows():
            lines.append(
                f"| {r['method']} | {r['baseline']} | {r['metric']} | {int(r['cells'])} | "
                f"{int(r['wins'])} | "
                f"{r['mean_diff']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
                f"{r['p_value']:.3g} |"
            )
    return lines


def _fidelity(name: str) -> list[str]:
    sites = json.loads((ROOT / "docs" / "runs" / name / "smd.json").read_text())["sites"]
    lines = [
        "| site | TSTR ratio | Dice synthetic-trained | Dice real-trained | W1 | "
        "NN distance median | "
        "real-real NN median | MIA AUC [95 % CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for site, m in sites.items():
        lines.append(
            f"| {site} | {m['tstr_ratio']:.3f} | {m['tstr_dice_synthetic']:.3f} | "
            f"{m['tstr_dice_real']:.3f} | "
            f"{m['intensity_w1']:.3f} | {m['nn_distance_median']:.3f} | "
            f"{m['real_nn_distance_median']:.3f} | "
            f"{m['mia_auc']:.2f} [{m['mia_auc_low']:.2f}, {m['mia_auc_high']:.2f}] |"
        )
    return lines


BLOCK = re.compile(r"(<!-- (table|fidelity|include):([\w./-]+) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)


def _include(name: str) -> list[str]:
    """A generated Markdown file under ``docs/compare/`` (``dp/UTILITY.md``), without its title."""
    path = HERE / name
    if HERE not in path.resolve().parents or path.suffix != ".md":
        raise SystemExit(f"include:{name}: expected a .md file under {HERE}")
    lines = path.read_text().rstrip("\n").splitlines()
    return lines[1:] if lines and lines[0].startswith("# ") else lines


def render(path: Path) -> int:
    """Rewrite every generated block of the Markdown file ``path``; returns how many there were."""
    text = path.read_text()
    count = 0

    def block(m: re.Match) -> str:
        nonlocal count
        count += 1
        kind, name = m.group(2), m.group(3)
        body = {"table": _summary, "fidelity": _fidelity, "include": _include}[kind](name)
        return m.group(1) + "\n".join(body) + "\n" + m.group(5)

    new = BLOCK.sub(block, text)
    if new != text:
        path.write_text(new)
    return count


def default_files() -> list[Path]:
    """What ``render`` rewrites when given no files: README.md and the site's pages."""
    return [ROOT / "README.md", *sorted(SITE.rglob("*.md"))]


def copy_images(dest: Path = IMAGES) -> list[Path]:
    """Copy the result folders' plots into ``dest`` (emptied first) as ``FOLDER-FILE.png``."""
    sources: dict[str, Path] = {}
    for pattern in IMAGE_FOLDERS:
        for folder in sorted(ROOT.glob(pattern)):
            for png in sorted(folder.glob("*.png")):
                name = f"{folder.name}-{png.name}"
                if name in sources:
                    raise SystemExit(f"{png} and {sources[name]} would both be copied to {name}")
                sources[name] = png
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, png in sources.items():
        shutil.copy2(png, dest / name)
    return [dest / name for name in sources]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("name")
    c.add_argument("source", type=Path)
    c.add_argument("--baseline")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("run_dir", type=Path)
    d = sub.add_parser("render")
    d.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/site/**/*.md")
    sub.add_parser("site")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        print(collect(a.name, a.source, a.baseline))
    elif a.cmd == "run":
        print(copy_run(a.name, a.run_dir))
    elif a.cmd == "site":
        print(f"{len(copy_images())} plot(s) copied to {IMAGES}")
    else:
        for path in a.files or default_files():
            count = render(path)
            if count:
                print(f"{count} block(s) rendered in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
