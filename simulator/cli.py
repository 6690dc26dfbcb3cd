"""``smg-sim``: a thin command line over :mod:`simulator.api`."""

from __future__ import annotations

import argparse
import sys

from simulator.config import PROFILES, ConfigError, build_config, merge, parse_set
from simulator.order import ORDER_KEYWORDS

EXIT_USAGE = 2
EXIT_PRIVACY = 3
EXIT_FAILED = 1


BENCHMARK_HELP = ("data: phantom (default, generated), mni152 (real brain anatomy from the MNI152 "
                  "template in nilearn), folder:PATH (SITE/images + SITE/masks PNG), prostate:PATH "
                  "(SITE/CaseXX.nii.gz + CaseXX_segmentation.nii.gz) or fundus:PATH "
                  "(DomainN/.../image + .../mask PNG)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", default=None, metavar="SPEC", help=BENCHMARK_HELP)
    p.add_argument("--target", default=None, choices=("auto", "disc", "cup"),
                   help="what to segment: auto (the benchmark's target) or, for fundus, disc or cup")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_data_options(p)
    p.add_argument("--sites", type=int, default=None,
                   help="number of hospital sites to simulate (default 6 of a generated benchmark, every "
                        "site of a user data set, or the length of --order's list)")
    p.add_argument("--order", default="fixed",
                   help=f"visiting order: {', '.join(ORDER_KEYWORDS)} (random is drawn from --seed), "
                        "or a comma list of site names such as charlie,alpha,bravo (default fixed)")
    p.add_argument("--method", default=None,
                   help="continual-learning method, by registry name (default smg); "
                        "an unknown name lists the known ones")
    p.add_argument("--profile", default="quick", choices=PROFILES,
                   help="size and schedule: smoke (tests, seconds), quick (default, minutes on a CPU), "
                        "paper (GPU)")
    p.add_argument("--seed", type=int, default=None,
                   help="run seed; data, order, initial weights and sampling seeds derive from it (default 0)")
    p.add_argument("--out", default=None,
                   help="run folder to create (must not exist or be empty; default runs/<time>-<method>-...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps_per_stage=50 (repeatable); "
                        "sections: run, data, model, train, runtime, smd, privacy")
    p.add_argument("--privacy", choices=("strict", "warn", "off"), default=None,
                   help="egress guard: strict (default) stops the run on a violation; warn blocks the "
                        "offending entry, records it and continues (the audit fails); off checks nothing "
                        "(only to measure the guard's cost; the audit fails)")
    p.add_argument("--allow-non-private", action="store_true",
                   help="allow the non-private reference methods (er_real), which move real images out "
                        "of sites; their privacy audit fails by design")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default from the profile: 2)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smg-sim",
        description="Simulate cross-site continual segmentation: one Ray actor per hospital site, "
                    "a central sequential learner, results tables and plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one sequential-learning simulation",
                         description="Visit the sites in order, train at each site, evaluate every "
                                     "site after every stage, and write a run folder.")
    _add_run_options(run)
    sub.add_parser("methods", help="list the registered methods")
    cmp = sub.add_parser("compare", help="run several methods over several seeds and orders, then tabulate",
                         description="Runs every (method, seed, order) under OUT/runs/ in one Ray instance "
                                     "(finished runs are skipped, unfinished ones moved aside), then writes "
                                     "compare.csv, compare.md, runs.csv, compare_bars.png and "
                                     "compare_mem_gen.png.")
    cmp.add_argument("--methods", required=True, help="comma list, e.g. finetune,smd_replay,smg")
    cmp.add_argument("--seeds", default="0", help="comma list of run seeds (default 0)")
    cmp.add_argument("--orders", default="random", help="comma list of orders: fixed, random, reverse "
                     "(an explicit site list is not allowed here) (default random)")
    _add_data_options(cmp)
    cmp.add_argument("--sites", type=int, default=None,
                     help="number of sites (default 6 of a generated benchmark, every site of a user data set)")
    cmp.add_argument("--profile", default="quick", choices=PROFILES, help="profile (default quick)")
    cmp.add_argument("--out", required=True, help="comparison folder (created or continued)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value for every run (repeatable)")
    cmp.add_argument("--allow-non-private", action="store_true",
                     help="allow the non-private references (joint, er_real); their audits fail by design")
    cmp.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default 2)")
    cmp.add_argument("--progress", action="store_true", help="show each run's progress lines")
    bench = sub.add_parser("bench", help="benchmarks: cost of one training step per method",
                           description="Seconds per outer step and peak resident memory of each method at a "
                                       "profile's sizes, with replay batches from several earlier sites; "
                                       "each method runs in its own process.")
    bench.add_argument("--methods", default="finetune,smd_replay,smg,pga_exact", help="comma list")
    bench.add_argument("--profile", default="quick", choices=PROFILES, help="profile (default quick)")
    bench.add_argument("--replay-sites", type=int, default=5, help="earlier sites in the batch (default 5)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps per method (default 10)")
    audit = sub.add_parser("audit", help="re-check a finished run's privacy from its own files",
                           description="Rebuild privacy_audit.json/.md/.html of RUN_DIR from its ledger, "
                                       "guard reports and file-access trace; print the verdict; exit 1 "
                                       "if the run fails the audit.")
    audit.add_argument("run_dir", help="a run folder written by smg-sim run")
    smd = sub.add_parser("smd", help="the Site-Modulated Diffusion backbone")
    smd_sub = smd.add_subparsers(dest="smd_command", required=True)
    pre = smd_sub.add_parser("pretrain", help="pre-train (or find in the cache) the public SMD backbone",
                             description="Pre-train the SMD backbone of a profile on public data only and "
                                         "store it in the user cache ($SMG_SIM_CACHE or ~/.cache/smg-sim), "
                                         "keyed by a hash of its config; runs reuse it.")
    pre.add_argument("--profile", default="quick", choices=PROFILES, help="profile (default quick)")
    pre.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a config value, e.g. --set smd.pretrain_steps=2000 (repeatable)")
    pre.add_argument("--force", action="store_true", help="pre-train again even if the cache holds it")
    data = sub.add_parser("data", help="look at the benchmark data (inside the sites)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser(
        "preview", help="each site saves a PNG of three of its train images with mask outlines",
        description="Each site actor writes <out>/<site>.png of its own data; nothing crosses "
                    "between processes but the file size.")
    _add_data_options(preview)
    preview.add_argument("--sites", type=int, default=None,
                         help="number of sites (default 6 of a generated benchmark, every site of a user data set)")
    preview.add_argument("--profile", default="quick", choices=PROFILES, help="sizes (default quick)")
    preview.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    preview.add_argument("--out", default="docs/sites", help="folder for the PNG files (default docs/sites)")
    inspect = data_sub.add_parser(
        "inspect", help="per site: cases, slices, image size, intensities, foreground, problems",
        description="Each site's reader runs inside that site's actor and reports statistics only: "
                    "numbers of cases and slices, image sizes as read, intensity statistics, foreground "
                    "fraction and every problem found (missing masks, size mismatches, unreadable files, "
                    "unexpected mask values, empty sites). Exit code 1 when a problem was found.")
    inspect.add_argument("spec", metavar="SPEC", help=BENCHMARK_HELP)
    inspect.add_argument("--target", default=None, choices=("auto", "disc", "cup"),
                         help="what to segment: auto, or disc / cup for fundus")
    inspect.add_argument("--sites", type=int, default=None, help="number of sites (default: all of a user "
                         "data set, 6 of a generated benchmark)")
    inspect.add_argument("--profile", default="quick", choices=PROFILES, help="sizes (default quick)")
    inspect.add_argument("--seed", type=int, default=0, help="run seed (sets the train/test split; default 0)")
    inspect.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a config value, e.g. --set data.image_size=128 (repeatable)")
    return parser


def _data_overrides(args: argparse.Namespace) -> dict[str, dict]:
    data = {}
    if args.benchmark is not None:
        data["benchmark"] = args.benchmark
    if args.target is not None:
        data["target"] = args.target
    return {"data": data} if data else {}


def config_from_args(args: argparse.Namespace):
    """The resolved config for ``smg-sim run``."""
    cli: dict[str, dict] = {"run": {"order": args.order}}
    if args.sites is not None:
        cli["run"]["sites"] = args.sites
    elif args.order not in ORDER_KEYWORDS:
        cli["run"]["sites"] = len([n for n in args.order.split(",") if n.strip()])
    for key in ("method", "seed", "out"):
        if getattr(args, key) is not None:
            cli["run"][key] = getattr(args, key)
    cli.update(_data_overrides(args))
    if args.num_cpus is not None:
        cli.setdefault("runtime", {})["num_cpus"] = args.num_cpus
    if args.no_dashboard:
        cli.setdefault("runtime", {})["dashboard"] = False
    if args.privacy:
        cli.setdefault("privacy", {})["mode"] = args.privacy
    if args.allow_non_private:
        cli.setdefault("privacy", {})["allow_non_private"] = True
    return build_config(args.profile, merge(cli, parse_set(args.overrides)))


def _span(stats: dict, key: str) -> str:
    lo, hi = int(stats[f"{key}_min"]), int(stats[f"{key}_max"])
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _print_inspection(cfg, report: dict[str, tuple[dict, list[str]]]) -> int:
    """The per-site statistics of ``smg-sim data inspect``; exit code 1 when a problem was found."""
    print(f"benchmark {cfg.data.benchmark} (target {cfg.data.target}, images resized to "
          f"{cfg.data.image_size} px)")
    cols = [("cases_train", "train cases", "{:.0f}"), ("cases_test", "test cases", "{:.0f}"),
            ("slices", "slices", "{:.0f}"), ("channels", "ch", "{:.0f}"),
            ("raw_height_min", "size as read (HxW)", None), ("intensity_mean", "mean", "{:.3f}"),
            ("intensity_std", "std", "{:.3f}"), ("intensity_p01", "p1", "{:.3f}"),
            ("intensity_p99", "p99", "{:.3f}"), ("foreground_fraction", "fg", "{:.3f}"),
            ("empty_masks", "empty", "{:.0f}"), ("problems", "problems", "{:.0f}")]
    rows = []
    for site, (stats, _) in report.items():
        row = [site]
        for key, _, fmt in cols:
            if key == "raw_height_min":
                if "raw_height_min" in stats:
                    row.append(f"{_span(stats, 'raw_height')}x{_span(stats, 'raw_width')}")
                else:
                    row.append(f"{stats['height']:.0f}x{stats['width']:.0f}" if "height" in stats else "-")
            else:
                row.append(fmt.format(stats[key]) if key in stats else "-")
        rows.append(row)
    header = ["site", *(c[1] for c in cols)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths,
                                                                                                   strict=True))))
    n_problems = 0
    for site, (stats, problems) in report.items():
        total = int(stats.get("problems", len(problems)))
        n_problems += total
        for p in problems:
            print(f"{site}: problem: {p}")
        if total > len(problems):
            print(f"{site}: ... and {total - len(problems)} more problems")
    print("no problems found" if not n_problems else f"{n_problems} problems found")
    return 0 if not n_problems else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``smg-sim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from server.methods import METHODS, UnknownMethodError
    from simulator.runfolder import RunFolderError

    if args.command == "methods":
        for name, cls in sorted(METHODS.items()):
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {'private' if cls.private else 'NON-PRIVATE'}  {doc}")
        return 0
    try:
        if args.command == "bench":
            from simulator.bench import step_cost

            rows = step_cost([m.strip() for m in args.methods.split(",") if m.strip()], args.profile,
                             args.replay_sites, args.steps)
            print(f"{'method':12s} {'s/step':>8s} {'peak RSS MB':>12s}")
            for r in rows:
                print(f"{r['method']:12s} {r['seconds_per_step']:8.3f} {r['peak_rss_mb']:12.0f}")
            return 0
        if args.command == "compare":
            from pathlib import Path

            from simulator import api

            overrides = parse_set(args.overrides)
            if args.sites is not None:
                overrides.setdefault("run", {})["sites"] = args.sites
            overrides = merge(_data_overrides(args), overrides)
            if args.num_cpus is not None:
                overrides.setdefault("runtime", {})["num_cpus"] = args.num_cpus
            if args.allow_non_private:
                overrides.setdefault("privacy", {})["allow_non_private"] = True
            overrides.setdefault("runtime", {}).setdefault("dashboard", False)
            base = build_config(args.profile, overrides)
            orders = [o.strip() for o in args.orders.split(",") if o.strip()]
            bad = [o for o in orders if o not in ORDER_KEYWORDS]
            if bad:
                raise ConfigError(f"--orders: {bad[0]!r} is not one of {', '.join(ORDER_KEYWORDS)}")
            try:
                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            except ValueError:
                raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            for m in methods:
                from server.methods import method_class

                method_class(m)
            table, status = api.compare(base, methods, seeds, orders, Path(args.out), progress=args.progress)
            print((Path(args.out) / "compare.md").read_text())
            failed = [name for name, s in status.items() if s == "failed"]
            if failed:
                print(f"smg-sim compare: {len(failed)} run(s) failed: {', '.join(failed)}; their folders say "
                      f"why, and running the same command again retries them", file=sys.stderr)
                return EXIT_FAILED
            return 0
        if args.command == "audit":
            from pathlib import Path

            from simulator.audit import build_audit

            run_dir = Path(args.run_dir)
            if not (run_dir / "ledger.jsonl").exists() or not (run_dir / "config.json").exists():
                print(f"smg-sim: error: {run_dir} is not a run folder (no ledger.jsonl/config.json)",
                      file=sys.stderr)
                return EXIT_USAGE
            a = build_audit(run_dir)
            for name in ("structural", "empirical", "formal"):
                c = a["claims"][name]
                print(f"{name:10s} {c['verdict']:15s} {c['claim']}")
                for k in c.get("checks", []):
                    if k["verdict"] != "pass":
                        print(f"    {k['scope']}: {k['check']}: {k['detail']}")
            print(f"verdict: {a['verdict'].upper()} ({run_dir / 'privacy_audit.md'})")
            return 0 if a["verdict"] == "pass" else EXIT_FAILED
        if args.command == "smd":
            from simulator import api

            cfg = build_config(args.profile, parse_set(args.overrides))
            info = api.pretrain_backbone(cfg, force=args.force)
            state = "found in cache" if info["cached"] else f"pre-trained in {info['pretrain_seconds']:.1f} s"
            print(f"SMD backbone {state}: {info['path']} ({info['parameters']} parameters, "
                  f"final loss {info['final_loss']:.4f})")
            return 0
        if args.command == "data" and args.data_command == "inspect":
            from simulator import api

            args.benchmark = args.spec
            run_values = {"seed": args.seed, **({"sites": args.sites} if args.sites is not None else {})}
            cfg = build_config(args.profile, merge({"run": run_values}, _data_overrides(args),
                                                   parse_set(args.overrides)))
            return _print_inspection(cfg, api.inspect_data(cfg))
        if args.command == "data":
            from simulator import api

            run_values = {"seed": args.seed, **({"sites": args.sites} if args.sites is not None else {})}
            cfg = build_config(args.profile, merge({"run": run_values}, _data_overrides(args)))
            for path in api.write_site_previews(cfg, args.out):
                print(path)
            return 0
        if args.command == "run":
            if args.sites is not None and args.sites < 1:
                raise ConfigError(f"--sites must be >= 1, got {args.sites}")
            cfg = config_from_args(args)
            from simulator import api

            api.plan_run(cfg)  # validate before anything is written
            api.run(cfg, progress=not args.quiet)
            return 0
    except (ConfigError, UnknownMethodError, RunFolderError) as exc:
        print(f"smg-sim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("smg-sim: interrupted; the run folder is marked FAILED", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure inside an actor: one line, the folder says FAILED
        from sites.egress import EgressViolation

        cause = exc
        text = str(exc)
        data_lines = [ln for ln in text.splitlines() if "DataError: " in ln]
        if data_lines:  # a site's reader found bad data: name the file, no traceback
            line = data_lines[-1]
            print(f"smg-sim: data error: {line.split('DataError:', 1)[-1].strip()}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, EgressViolation) or "EgressViolation" in text:
            line = next((ln for ln in text.splitlines() if "privacy guard" in ln), text.splitlines()[-1])
            print(f"smg-sim: stopped: {line.strip()}", file=sys.stderr)
            return EXIT_PRIVACY
        last = text.strip().splitlines()[-1] if text.strip() else type(cause).__name__
        print(f"smg-sim: error: {type(cause).__name__}: {last}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
