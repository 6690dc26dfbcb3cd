"""``smg-sim``: the argument parser; :mod:`simulator.driver.commands` runs each command."""

from __future__ import annotations

import argparse
import sys

from simulator.benchmarks.order import ORDER_KEYWORDS
from simulator.config import PROFILES
from simulator.driver.cli_options import (
    BENCHMARK_HELP,
    add_cluster_options,
    add_data_options,
    add_set,
    add_site_selection,
)
from simulator.driver.flower.cli import add_flower


def _add_run_options(p: argparse.ArgumentParser) -> None:
    add_data_options(p)
    p.add_argument(
        "--sites",
        type=int,
        default=None,
        help="number of hospital sites to simulate (default 6 of a generated benchmark, every "
        "site of a user data set, or the length of --order's list)",
    )
    p.add_argument(
        "--order",
        default="fixed",
        help=f"visiting order: {', '.join(ORDER_KEYWORDS)} (random is drawn from --seed), "
        "or a comma list of site names such as charlie,alpha,bravo (default fixed)",
    )
    p.add_argument(
        "--method",
        default=None,
        help="continual-learning method, by registry name (default smg); "
        "an unknown name lists the known ones",
    )
    p.add_argument(
        "--profile",
        default="quick",
        choices=PROFILES,
        help="size and schedule: smoke (tests, seconds), quick (default, minutes on a CPU), "
        "paper (GPU)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="run seed; data, order, initial weights and sampling seeds derive from it (default 0)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="run folder to create (must not exist or be empty; default runs/<time>-<method>-...)",
    )
    add_set(
        p,
        "override a config value, e.g. --set train.steps_per_stage=50 (repeatable); "
        "sections: run, data, model, train, runtime, smd, privacy, methods",
    )
    p.add_argument(
        "--privacy",
        choices=("strict", "warn", "off"),
        default=None,
        help="egress guard: strict (default) stops the run on a violation; warn blocks the "
        "offending entry, records it and continues (the audit fails); off checks nothing "
        "(only to measure the guard's cost; the audit fails)",
    )
    p.add_argument(
        "--exports",
        choices=("model", "prompt"),
        default=None,
        help="what a site exports: model (default; the model travels to the site, as in the paper) "
        "or prompt (only its SMD prompt and scalar metrics; the learner trains on synthetic "
        "images of each site)",
    )
    p.add_argument(
        "--allow-non-private",
        action="store_true",
        help="allow the non-private reference methods (er_real), which move real images out "
        "of sites; their privacy audit fails by design",
    )
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs Ray may use (default from the profile: 2)"
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument(
        "--engine",
        choices=("ray", "flower", "inprocess"),
        default=None,
        help="ray: every site a Ray actor (default); flower: the same run as a Flower app in "
        "Flower's simulation, one SuperNode per site; inprocess: every site an object of the "
        "driver's own process (tests and debugging: the same results, no isolation)",
    )
    add_cluster_options(p)
    p.add_argument(
        "--inject-fault",
        dest="inject_fault",
        action="append",
        default=[],
        metavar="FAULT",
        help="for tests and demos: kill-site:NAME@STAGE (the site's process dies during that "
        "stage; it is restarted and the work repeated) or kill-driver@STAGE (the driver "
        "exits after that stage's checkpoint; continue with smg-sim resume); repeatable",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run",
        help="run one sequential-learning simulation",
        description="Visit the sites in order, train at each site, evaluate every "
        "site after every stage, and write a run folder.",
    )
    _add_run_options(run)


def _add_compare(sub) -> None:
    cmp = sub.add_parser(
        "compare",
        help="run several methods over several seeds and orders, then tabulate",
        description="Runs every (method, seed, order) under OUT/runs/ in one Ray instance "
        "(finished runs are skipped, unfinished ones moved aside), then writes "
        "compare.csv, compare.md, runs.csv, paired.csv, compare_bars.png and "
        "compare_mem_gen.png.",
    )
    cmp.add_argument("--methods", required=True, help="comma list, e.g. finetune,smd_replay,smg")
    cmp.add_argument("--seeds", default="0", help="comma list of run seeds (default 0)")
    cmp.add_argument(
        "--orders",
        default="random",
        help="comma list of orders: fixed, random, reverse "
        "(an explicit site list is not allowed here) (default random)",
    )
    add_data_options(cmp)
    cmp.add_argument(
        "--sites",
        type=int,
        default=None,
        help="number of sites (default 6 of a generated benchmark, every site of a user data set)",
    )
    cmp.add_argument("--profile", default="quick", choices=PROFILES, help="profile (default quick)")
    cmp.add_argument("--out", required=True, help="comparison folder (created or continued)")
    add_set(cmp, "override a config value for every run (repeatable)")
    cmp.add_argument(
        "--allow-non-private",
        action="store_true",
        help="allow the non-private references (joint, er_real); their audits fail by design",
    )
    cmp.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default 2)")
    add_cluster_options(cmp)
    cmp.add_argument(
        "--baseline",
        default=None,
        metavar="NAME",
        help="paired differences only against this method (default: every method against "
        "every other)",
    )
    cmp.add_argument("--progress", action="store_true", help="show each run's progress lines")
    cmp.add_argument(
        "--max-parallel",
        type=int,
        default=1,
        metavar="N",
        help="runs at once, each in a driver process of its own that joins this comparison's "
        "Ray instance, with runtime.torch_threads shared out among them; its log is "
        "OUT/logs/<run>.log (default 1: one run after another in this process)",
    )


def _add_bench(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmarks: step cost per method and stage, and where a run's time goes",
        description="Seconds per outer step and peak resident memory of each method at a "
        "profile's sizes, at each given stage (stage s replays s-1 earlier "
        "sites; each method in its own process), on the device --device names; with --run, "
        "one whole run of that method and its seconds per phase. Writes bench.json.",
    )
    bench.add_argument(
        "--device",
        default=None,
        choices=("auto", "cpu", "cuda"),
        help="where to compute (runtime.device; default: the profile's, auto)",
    )
    bench.add_argument("--methods", default="finetune,smd_replay_matched,smg", help="comma list")
    bench.add_argument("--stages", default="2,6", help="comma list of stages to time (default 2,6)")
    bench.add_argument(
        "--profile", default="quick", choices=PROFILES, help="profile (default quick)"
    )
    bench.add_argument(
        "--steps", type=int, default=10, help="timed steps per method and stage (default 10)"
    )
    bench.add_argument(
        "--run",
        default=None,
        metavar="METHOD",
        help="also time one whole run of METHOD (6 sites, random order, seed 0) by phase",
    )
    bench.add_argument(
        "--out", default="bench.json", help="where to write the figures (default bench.json)"
    )
    add_set(bench, "override a config value, e.g. --set methods.smg.lookahead=2 (repeatable)")


def _add_doctor(sub) -> None:
    doc = sub.add_parser(
        "doctor",
        help="check this machine: a 2-site smoke run of every method on the device, step costs",
        description="Run it first on a new machine: every registered method runs a 2-site smoke "
        "run on the device (one Ray instance for all), pass or fail with the site's error code "
        "and the log to read, then the seconds per step of every method there. Exit 1 if any "
        "method fails.",
    )
    doc.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto"
    )
    doc.add_argument("--methods", default="", help="comma list (default: every method)")
    doc.add_argument(
        "--out", default=None, help="where the runs and doctor.json go (default runs/doctor-<time>)"
    )


def _add_resume(sub) -> None:
    res = sub.add_parser(
        "resume",
        help="continue an unfinished run from its last checkpoint",
        description="Continue RUN_DIR after the last stage it checkpointed; the results "
        "are those of a run that never stopped. A finished run, one without a "
        "checkpoint, or one whose config.json the current code resolves "
        "differently is refused (the differing keys are named).",
    )
    res.add_argument("run_dir", help="a run folder written by smg-sim run")
    res.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_status(sub) -> None:
    st = sub.add_parser(
        "status",
        help="the state of every run under runs/ (or of the folder given)",
        description="Per run folder: complete, running, resumable or failed; the stage "
        "reached, the latest Mem and Gen, an ETA for a running run, and its live "
        "actors from the Ray dashboard's state API when the dashboard is on.",
    )
    st.add_argument(
        "path", nargs="?", default="runs", help="a run folder or a folder of them (default runs)"
    )


def _add_audit(sub) -> None:
    audit = sub.add_parser(
        "audit",
        help="re-check a finished run's privacy from its own files",
        description="Rebuild privacy_audit.json/.md/.html of RUN_DIR from its ledger, "
        "guard reports and file-access trace; print the verdict; exit 1 "
        "if the run fails the audit.",
    )
    audit.add_argument("run_dir", help="a run folder written by smg-sim run")
    audit.add_argument(
        "--node-traces",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of file-access traces that deployed Flower nodes kept (each site's node "
        "writes its own; smg-sim flower up prints the folder); repeatable",
    )
    audit.add_argument(
        "--require-isolation",
        action="store_true",
        help="fail the audit when sites shared a process (in-process runs, Flower's simulation); "
        "without it the verdict says it holds without isolation",
    )


def _add_dp_audit(sub) -> None:
    dpa = sub.add_parser(
        "dp-audit",
        help="check a site's DP training empirically, in one training run",
        description="Add canaries (each with probability 1/2) to a phantom site's private set, "
        "train one DP visit as a site does, guess membership from the exported weights only, "
        "and print the lower bound on epsilon the guesses imply (95 percent confidence; Steinke, "
        "Nasr and Jagielski 2023) beside the accountant's epsilon.",
    )
    dpa.add_argument("--epsilon", type=float, required=True, help="the training's DP epsilon")
    dpa.add_argument("--canaries", type=int, default=1000, help="canary cases (default 1000)")
    dpa.add_argument("--guesses", type=int, default=400, help="guesses, half in, half out")
    dpa.add_argument("--steps", type=int, default=300, help="DP-SGD steps (default 300)")
    dpa.add_argument("--batch", type=int, default=64, help="expected batch (default 64)")
    dpa.add_argument("--seed", type=int, default=0)
    dpa.add_argument(
        "--broken",
        action="store_true",
        help="a control for testing the audit: the same training with no clipping and no noise",
    )
    dpa.add_argument("--out", default="", help="also write the figures to this JSON file")


def _add_smd(sub) -> None:
    smd = sub.add_parser("smd", help="the Site-Modulated Diffusion backbone")
    smd_sub = smd.add_subparsers(dest="smd_command", required=True)
    pre = smd_sub.add_parser(
        "pretrain",
        help="pre-train (or find in the cache) the public SMD backbone",
        description="Pre-train the SMD backbone of a profile on public data only and "
        "store it in the user cache ($SMG_SIM_CACHE or ~/.cache/smg-sim), "
        "keyed by a hash of its config; runs reuse it.",
    )
    pre.add_argument("--profile", default="quick", choices=PROFILES, help="profile (default quick)")
    add_set(pre, "override a config value, e.g. --set smd.pretrain_steps=2000 (repeatable)")
    pre.add_argument(
        "--force", action="store_true", help="pre-train again even if the cache holds it"
    )


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="look at the benchmark data (inside the sites)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser(
        "preview",
        help="each site saves a PNG of three of its train images with mask outlines",
        description="Each site actor writes <out>/<site>.png of its own data; nothing crosses "
        "between processes but the file size.",
    )
    add_data_options(preview)
    add_site_selection(preview)
    preview.add_argument(
        "--out",
        default=None,
        help="folder for the PNG files (needed for a generated benchmark, e.g. docs/sites; "
        "user data: each site's own folder unless given)",
    )
    preview.add_argument(
        "--allow-real-previews",
        action="store_true",
        help="let the sites of a user data set write previews of their real images",
    )
    inspect = data_sub.add_parser(
        "inspect",
        help="per site: cases, slices, image size, intensities, foreground, problems",
        description="Each site's reader runs inside that site's actor and reports statistics only: "
        "numbers of cases and slices, image sizes as read, intensity statistics, foreground "
        "fraction and every problem found (missing masks, size mismatches, unreadable files, "
        "unexpected mask values, empty sites). Exit code 1 when a problem was found.",
    )
    inspect.add_argument("spec", metavar="SPEC", help=BENCHMARK_HELP)
    inspect.add_argument(
        "--target",
        default=None,
        choices=("auto", "disc", "cup"),
        help="what to segment: auto, or disc / cup for fundus",
    )
    add_site_selection(inspect)
    add_set(inspect, "override a config value, e.g. --set data.image_size=128 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The ``smg-sim`` argument parser: one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="smg-sim",
        description="Simulate cross-site continual segmentation: one Ray actor per hospital site, "
        "a central sequential learner, results tables and plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    sub.add_parser("methods", help="list the registered methods")
    for add in (
        _add_resume,
        _add_status,
        _add_compare,
        _add_bench,
        _add_audit,
        _add_dp_audit,
        _add_doctor,
        _add_smd,
        _add_data,
        add_flower,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smg-sim`` console script."""
    from simulator.driver.commands import dispatch

    return dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
