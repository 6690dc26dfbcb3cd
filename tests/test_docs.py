"""The documentation site's generated parts: the CLI reference and the results pages' blocks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from simulator.driver.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_page(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("docs") / "cli.md"
    _load(ROOT / "docs" / "cli_reference.py").write(out)
    return out.read_text()


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _section(page: str, names: tuple[str, ...]) -> str:
    """The text of a command's section: from its heading to the next heading of any level."""
    head = f"smg-sim {' '.join(names)} {{#{'-'.join(names)}}}\n"
    start = page.index(head) + len(head)
    nxt = re.search(r"^#+ ", page[start:], re.M)
    return page[start : start + nxt.start()] if nxt else page[start:]


def test_cli_reference_has_every_command_in_the_parsers_order(cli_page: str) -> None:
    commands = [names for names, _ in _commands(build_parser())]
    assert len(commands) >= 12
    heads = re.findall(r"^#+ smg-sim (.+?) \{#", cli_page, re.M)
    assert heads == [" ".join(names) for names in commands]
    assert "usage: smg-sim [-h]" in cli_page


def test_cli_reference_lists_every_option_of_every_command(cli_page: str) -> None:
    for names, parser in _commands(build_parser()):
        section = _section(cli_page, names)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            shown = action.help is not argparse.SUPPRESS
            for flag in action.option_strings:
                assert (f"<code>{flag}</code>" in section) == shown, (names, flag)
            if not action.option_strings:
                name = (action.metavar or action.dest).replace("_", "&#95;")
                assert re.search(rf"\| \(positional\) \| <code>\[?{name}\b", section), (names, name)
        if parser.description:
            assert parser.description.split()[0] in section


def test_cli_reference_shows_defaults_and_choices(cli_page: str) -> None:
    run = _section(cli_page, ("run",))
    assert "| <code>--order</code> | <code>ORDER</code> | <code>fixed</code> |" in run
    assert "<code>{strict,warn,off}</code>" in run
    # the help text's angle brackets are text, not HTML tags
    assert "runs/&lt;time&gt;" in run


def test_render_rewrites_every_block_of_a_page(tmp_path: Path) -> None:
    render = _load(ROOT / "docs" / "compare" / "render.py")
    page = tmp_path / "page.md"
    page.write_text(
        "before\n<!-- table:smg_vs_matched -->\nstale\n<!-- /table:smg_vs_matched -->\n"
        "<!-- fidelity:quick-smg-s0-random -->\nstale\n<!-- /fidelity:quick-smg-s0-random -->\n"
    )
    assert render.render(page) == 2
    text = page.read_text()
    assert "stale" not in text and text.startswith("before\n")
    assert "| smg | 10 |" in text and "| charlie |" in text
    before = page.stat().st_mtime_ns
    assert render.render(page) == 2
    assert page.stat().st_mtime_ns == before  # already true: left untouched
    included = tmp_path / "included.md"
    included.write_text(
        "<!-- include:tuning/TUNING.md -->\nstale\n<!-- /include:tuning/TUNING.md -->\n"
    )
    assert render.render(included) == 1
    body = included.read_text()
    generated = (ROOT / "docs" / "compare" / "tuning" / "TUNING.md").read_text().splitlines()
    assert "stale" not in body and generated[0] not in body and generated[-1] in body
    escape = tmp_path / "escape.md"
    escape.write_text("<!-- include:../README.md -->\n<!-- /include:../README.md -->\n")
    with pytest.raises(SystemExit, match="expected a .md file under"):
        render.render(escape)
    files = render.default_files()
    assert files[0] == ROOT / "README.md"
    assert all(f.is_relative_to(ROOT / "docs" / "site") for f in files[1:])


def test_site_images_are_the_result_folders_plots(tmp_path: Path) -> None:
    render = _load(ROOT / "docs" / "compare" / "render.py")
    copied = render.copy_images(tmp_path / "img")
    names = {p.name for p in copied}
    assert "smg_vs_matched-compare_mem_gen.png" in names
    assert "quick-smg-s0-random-replay_samples.png" in names
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in copied)
    for page in (ROOT / "docs" / "site" / "results").glob("*.md"):
        for ref in re.findall(r"\]\(img/([^)]+)\)", page.read_text()):
            assert ref in names, (page.name, ref)


def test_the_committed_cli_reference_is_what_the_parser_generates(cli_page: str) -> None:
    """docs/site/reference/cli.md is committed (readable on a repository browser, linked from the
    README); `make docs` regenerates it, and this fails when the parser changed without it."""
    committed = (ROOT / "docs" / "site" / "reference" / "cli.md").read_text()
    assert committed == cli_page, "run: .venv/bin/python docs/cli_reference.py"


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_readme_is_short_its_links_resolve_and_it_reaches_every_page() -> None:
    import yaml

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [x for x in links if "://" not in x]
    missing = [x for x in local if not (ROOT / x).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = {f"docs/site/{p}" for p in _nav_pages(nav)}
    assert pages <= set(local), f"pages the README does not link: {sorted(pages - set(local))}"


def _fresh_runs(digest: str, gen_lead: float) -> pd.DataFrame:
    """A complete phantom grid of the plan's shape: smg ahead of matched replay by 0.02 on Mem
    and by ``gen_lead`` on Gen in every cell, equal LA; the other methods 0.1 lower."""
    fresh = _load(ROOT / "docs" / "compare" / "fresh" / "results.py")
    _, seeds, orders = fresh.BENCHMARKS["phantom"]
    rows = []
    for method in fresh.METHODS:
        for i, (seed, order) in enumerate((s, o) for s in seeds for o in orders):
            base = 0.5 + 0.01 * i
            up = method == "smg"
            low = method not in ("smg", "smd_replay_matched")
            rows.append(
                {
                    "run": f"{method}-s{seed}-{order}",
                    "method": method,
                    "seed": seed,
                    "order": order,
                    "Mem": base + (0.02 if up else 0) - (0.1 if low else 0),
                    "Gen": base + (gen_lead + 0.001 * i if up else 0) - (0.1 if low else 0),
                    "LA": 0.9,
                    "Retention": 0.9,
                    "BWT": -0.1,
                    "Final": base,
                    "audit": "fail" if method == "joint" else "pass",
                    "code_digest": digest,
                }
            )
    return pd.DataFrame(rows)


def test_the_fresh_grids_verdict_follows_the_plans_rule() -> None:
    fresh = _load(ROOT / "docs" / "compare" / "fresh" / "results.py")
    digest = fresh.planned_digest()
    assert len(digest) == 64
    text = "\n".join(fresh.benchmark_section("phantom", _fresh_runs(digest, 0.01), digest)[0])
    assert "Verdict on phantom: the hypothesis holds" in text
    assert "Runs finished: 70 of 70." in text and "all pass" in text
    # Gen behind in half the cells: its CI crosses zero and the verdict says so
    runs = _fresh_runs(digest, 0.0)
    runs.loc[runs["method"] == "smg", "Gen"] -= [0.02 * (i % 2) for i in range(10)]
    text = "\n".join(fresh.benchmark_section("phantom", runs, digest)[0])
    assert "the hypothesis fails.** Condition(s) not met: Gen." in text
    # a missing run, or a run of other code: not decided
    runs = _fresh_runs(digest, 0.01)
    text = "\n".join(fresh.benchmark_section("phantom", runs.iloc[1:], digest)[0])
    assert "not decided" in text and "Runs finished: 69 of 70; missing 1." in text
    runs.loc[0, "code_digest"] = "0" * 64
    runs.loc[3, "audit"] = "fail"
    text = "\n".join(fresh.benchmark_section("phantom", runs, digest)[0])
    assert "not decided" in text and "NOT every run ran" in text and "1 do not pass" in text


def test_the_fresh_grid_reads_metrics_at_full_precision(tmp_path: Path) -> None:
    """runs.csv rounds to 4 decimals; a difference of 0.00006 must stay a loss, not a tie."""
    fresh = _load(ROOT / "docs" / "compare" / "fresh" / "results.py")
    exact = {"a": 0.50626, "b": 0.50632}
    rows = []
    for run, gen in exact.items():
        rows.append({"run": run, "method": run, "seed": 5, "order": "random", "Gen": round(gen, 4)})
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "metrics.json").write_text(json.dumps({"metrics": {"Gen": gen}}))
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False, float_format="%.4f")
    runs = fresh.load(tmp_path)
    assert runs.set_index("run")["Gen"].to_dict() == exact
    assert fresh.paired(runs, "phantom", "a", "b", "Gen")["mean_diff"] < 0
