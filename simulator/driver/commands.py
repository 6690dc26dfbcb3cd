"""One function per ``smg-sim`` command, and the mapping of failures to exit codes by type.

Each ``cmd_*`` function takes the parsed arguments and returns an exit code; :func:`dispatch`
runs the chosen one and turns each kind of failure (an exception class of
:mod:`simulator.errors`) into one line on stderr and its exit code, with no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from simulator.benchmarks import catalog
from simulator.benchmarks.order import ORDER_KEYWORDS
from simulator.config import build_config, parse_set
from simulator.driver.cli_options import compare_config, config_from_args, data_config
from simulator.driver.inspection import print_inspection
from simulator.errors import (
    AccessViolation,
    ConfigError,
    DataError,
    EgressViolation,
    RunFolderError,
    SiteFailure,
    SiteUnavailable,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PRIVACY = 3
EXIT_INTERRUPTED = 130


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def cmd_methods(args: argparse.Namespace) -> int:
    """``smg-sim methods``: every registered method, whether it is private, and what it is."""
    from server.methods import METHODS

    for name, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} {'private' if cls.private else 'NON-PRIVATE'}  {doc}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``smg-sim run``: one simulation, validated before anything is written."""
    from simulator.driver import api

    if args.sites is not None and args.sites < 1:
        raise ConfigError(f"--sites must be >= 1, got {args.sites}")
    api.run(config_from_args(args), progress=not args.quiet)
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """``smg-sim resume RUN_DIR``: continue an unfinished run from its last checkpoint."""
    from simulator.driver import api

    api.resume(Path(args.run_dir), progress=not args.quiet)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """``smg-sim status [PATH]``: every run's state, stage, Mem, Gen and ETA."""
    from simulator.driver.status import status

    if not Path(args.path).exists():
        raise RunFolderError(f"{args.path}: no such folder")
    print(status(Path(args.path)))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """``smg-sim compare``: every (method, seed, order) run missing, then the tables."""
    from server.methods import method_class
    from simulator.driver import api

    base = compare_config(args)
    orders = _csv(args.orders)
    bad = [o for o in orders if o not in ORDER_KEYWORDS]
    if bad:
        raise ConfigError(f"--orders: {bad[0]!r} is not one of {', '.join(ORDER_KEYWORDS)}")
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    methods = _csv(args.methods)
    for m in methods:
        method_class(m)
    if args.baseline is not None and args.baseline not in methods:
        raise ConfigError(
            f"--baseline {args.baseline!r} is not among --methods ({', '.join(methods)})"
        )
    if args.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {args.max_parallel}")
    _, status = api.compare(
        base,
        methods,
        seeds,
        orders,
        Path(args.out),
        progress=args.progress,
        baseline=args.baseline,
        max_parallel=args.max_parallel,
    )
    print((Path(args.out) / "compare.md").read_text())
    failed = [name for name, s in status.items() if s == "failed"]
    if failed:
        print(
            f"smg-sim compare: {len(failed)} run(s) failed: {', '.join(failed)}; their folders say "
            f"why, and running the same command again retries them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """``smg-sim bench``: seconds per step of each method at each stage, and optionally one run by
    phase."""
    import json

    from simulator.driver.bench import run_phases, step_cost

    overrides = parse_set(args.overrides)
    if args.device:
        overrides.setdefault("runtime", {})["device"] = args.device
    cfg = build_config(args.profile, overrides)
    try:
        stages = [int(s) for s in _csv(args.stages)]
    except ValueError:
        raise ConfigError(f"--stages {args.stages!r}: expected comma-separated integers") from None
    if not stages or min(stages) < 1:
        raise ConfigError(f"--stages {args.stages!r}: expected stages >= 1")
    rows = step_cost(cfg, _csv(args.methods), stages, args.steps)
    print(f"{'method':18s} {'stage':>5s} {'s/step':>8s} {'x finetune':>10s} {'peak RSS MB':>12s}")
    base = {r["stage"]: r["seconds_per_step"] for r in rows if r["method"] == "finetune"}
    for r in rows:
        ratio = (
            f"{r['seconds_per_step'] / base[r['stage']]:10.2f}"
            if r["stage"] in base
            else f"{'-':>10s}"
        )
        print(
            f"{r['method']:18s} {r['stage']:5d} {r['seconds_per_step']:8.3f} {ratio} "
            f"{r['peak_rss_mb']:12.0f}"
        )
    report: dict = {"profile": args.profile, "steps": rows}
    if args.run:
        report["run"] = run_phases(cfg, args.run)
        print(
            f"one {args.run} run: {report['run']['after_ray_start_seconds']:.1f} s after Ray start"
        )
        for phase, sec in report["run"]["phases"].items():
            print(f"  {phase:16s} {sec:8.1f} s")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.out}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """``smg-sim doctor``: every method's smoke run on the device, then its step cost."""
    import datetime as dt
    import json

    from server.methods import METHODS
    from simulator.driver.doctor import doctor

    methods = _csv(args.methods) or sorted(METHODS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(
                f"--methods: unknown method {m!r}; known: {', '.join(sorted(METHODS))}"
            )
    out = Path(args.out or f"runs/doctor-{dt.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    report = doctor(args.device, methods, out, sys.stderr)
    (out / "doctor.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'method':18s} {'smoke run':>10s} {'s/step':>9s}  note")
    steps = {r["method"]: r["seconds_per_step"] for r in report["steps"]}
    for r in report["methods"]:
        state = "pass" if r["passed"] else "FAIL"
        note = "" if r["passed"] else f"{r['code']}: read {r['log']}"
        print(f"{r['method']:18s} {state:>10s} {steps.get(r['method'], float('nan')):9.4f}  {note}")
    failed = [r["method"] for r in report["methods"] if not r["passed"]]
    print(
        f"device {report['device']}: {len(methods) - len(failed)} of {len(methods)} methods pass "
        f"({report['seconds']:.0f} s); figures in {out / 'doctor.json'}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """``smg-sim audit RUN_DIR``: rebuild the privacy audit from the run folder's own files."""
    from simulator.driver.audit.build import build_audit

    run_dir = Path(args.run_dir)
    if not (run_dir / "ledger.jsonl").exists() or not (run_dir / "config.json").exists():
        raise RunFolderError(f"{run_dir} is not a run folder (no ledger.jsonl/config.json)")
    a = build_audit(
        run_dir,
        node_traces=[Path(p) for p in args.node_traces],
        require_isolation=args.require_isolation,
    )
    print("trust model:")
    for line in a["trust_model"]:
        print(f"  - {line}")
    for name in ("structural", "empirical", "formal"):
        c = a["claims"][name]
        print(f"{name:10s} {c['verdict']:15s} {c['claim']}")
        for k in c.get("checks", []):
            if k["verdict"] != "pass":
                print(f"    {k['scope']}: {k['check']}: {k['detail']}")
    print("limits:")
    for line in a["limits"]:
        print(f"  - {line}")
    print(f"verdict: {a['verdict_text']} ({run_dir / 'privacy_audit.md'})")
    return EXIT_OK if a["verdict"] == "pass" else EXIT_FAILED


def cmd_smd(args: argparse.Namespace) -> int:
    """``smg-sim smd pretrain``: pre-train (or find) the public SMD backbone of a profile."""
    from simulator.driver import api

    info = api.pretrain_backbone(
        build_config(args.profile, parse_set(args.overrides)), force=args.force
    )
    state = (
        "found in cache" if info["cached"] else f"pre-trained in {info['pretrain_seconds']:.1f} s"
    )
    print(
        f"SMD backbone {state}: {info['path']} ({info['parameters']} parameters, "
        f"final loss {info['final_loss']:.4f})"
    )
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """``smg-sim data inspect|preview``: statistics, or preview PNGs, made inside each site."""
    from simulator.driver import api

    if args.data_command == "inspect":
        args.benchmark = args.spec
        cfg = data_config(args, args.overrides)
        return EXIT_FAILED if print_inspection(cfg, api.inspect_data(cfg)) else EXIT_OK
    paths, record = api.write_site_previews(
        data_config(args, []),
        Path(args.out) if args.out else None,
        allow_real=args.allow_real_previews,
    )
    for path in paths:
        print(path)
    print(f"smg-sim: messages and file-access trace in {record}")
    return EXIT_OK


def cmd_flower(args: argparse.Namespace) -> int:
    """``smg-sim flower up|down``: a local Flower deployment, every site its own SuperNode
    process."""
    from simulator.driver.flower import deploy as flower_deploy

    if args.flower_command == "down":
        for what in flower_deploy.down(Path(args.dir)):
            print(f"smg-sim: stopped {what}")
        return EXIT_OK
    if args.flower_command == "settings":
        from simulator.driver.engine.flower_sim import write_node_settings
        from simulator.driver.plan import plan_run, site_settings
        from sites.settings import node_settings_folder

        plan = plan_run(data_config(args, args.overrides), new_folder=False)
        folder = node_settings_folder()
        traces = folder / "file_access"  # the nodes keep their traces here
        own = site_settings(plan.config, plan.specs, plan.guard_mode, traces, "flwr-run")
        for path in write_node_settings(own, folder):
            print(f"smg-sim: {path}")
        print(f"smg-sim: audit a run of these nodes with: smg-sim audit RUN --node-traces {traces}")
        return EXIT_OK
    if catalog.is_user_data(args.benchmark):
        raise ConfigError(
            "smg-sim flower up: a user data set needs each SuperNode's data spec in its node "
            "config; this command starts generated benchmarks only"
        )
    cfg = data_config(args, args.overrides)
    state = flower_deploy.up(Path(args.dir), cfg)
    for p in state["processes"]:
        print(f"smg-sim: {p['role']}: pid {p['pid']}, log {p['log']}")
    print(f"smg-sim: SuperLink on {state['superlink']}; from the project folder run the app with:")
    print(f"  {flower_deploy.run_command(state)}")
    print(f"smg-sim: stop it with: smg-sim flower down --dir {args.dir}")
    print(
        f"smg-sim: the nodes keep their file-access traces; audit a run with: smg-sim audit RUN "
        f"--node-traces {Path(args.dir).resolve() / 'file_access'}"
    )
    return EXIT_OK


def cmd_dp_audit(args: argparse.Namespace) -> int:
    """``smg-sim dp-audit``: the one-run empirical check of a site's DP training."""
    import json

    from simulator.driver.audit.dp_run import one_run_audit

    if args.epsilon <= 0 or args.canaries < 2 or not 0 < args.guesses <= args.canaries:
        raise ConfigError(
            f"dp-audit: expected --epsilon > 0 and 0 < --guesses <= --canaries, got "
            f"{args.epsilon}, {args.guesses}, {args.canaries}"
        )
    res = one_run_audit(
        args.epsilon,
        canaries=args.canaries,
        k_in=args.guesses // 2,
        k_out=args.guesses - args.guesses // 2,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        broken=args.broken,
    )
    for key, value in res.items():
        print(f"{key:20s} {value:.4g}" if isinstance(value, float) else f"{key:20s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "methods": cmd_methods,
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "compare": cmd_compare,
    "bench": cmd_bench,
    "audit": cmd_audit,
    "dp-audit": cmd_dp_audit,
    "doctor": cmd_doctor,
    "smd": cmd_smd,
    "data": cmd_data,
    "flower": cmd_flower,
}


def _fail(text: str, code: int) -> int:
    print(text, file=sys.stderr)
    return code


def guarded(work: Callable[[], int]) -> int:
    """Run ``work``; each kind of failure becomes one line on stderr and its exit code."""
    try:
        return work()
    except (ConfigError, RunFolderError) as exc:
        return _fail(f"smg-sim: error: {exc}", EXIT_USAGE)
    except DataError as exc:  # a site's reader found bad data: the message names the file
        return _fail(f"smg-sim: data error: {exc}", EXIT_USAGE)
    except EgressViolation as exc:
        return _fail(f"smg-sim: stopped: {exc}", EXIT_PRIVACY)
    except AccessViolation as exc:
        return _fail(f"smg-sim: stopped: {exc}", EXIT_PRIVACY)
    except SiteFailure as exc:  # a code from the site; its details are in the site's own log
        if exc.code == "egress-violation":
            return _fail(f"smg-sim: stopped by the privacy guard: {exc}", EXIT_PRIVACY)
        if exc.code == "data-error":
            return _fail(f"smg-sim: data error: {exc}", EXIT_USAGE)
        if exc.code in ("settings-differ", "refused-setting"):
            return _fail(f"smg-sim: error: {exc}", EXIT_USAGE)
        return _fail(f"smg-sim: error: {exc}", EXIT_FAILED)
    except SiteUnavailable as exc:  # the run folder keeps its last checkpoint
        return _fail(f"smg-sim: stopped: {exc}; continue with smg-sim resume RUN_DIR", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("smg-sim: interrupted; the run folder is marked FAILED", EXIT_INTERRUPTED)
    except Exception as exc:  # anything else: one line; a run folder says FAILED and why
        text = str(exc).strip()
        last = text.splitlines()[-1] if text else ""
        return _fail(f"smg-sim: error: {type(exc).__name__}: {last}", EXIT_FAILED)


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command, its failures mapped to exit codes by :func:`guarded`."""
    return guarded(lambda: COMMANDS[args.command](args))
