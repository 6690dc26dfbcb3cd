"""The option groups several ``smg-sim`` commands share, and the configs their arguments
resolve to."""

from __future__ import annotations

import argparse

from simulator.benchmarks.order import ORDER_KEYWORDS
from simulator.config import PROFILES, Config, build_config, merge, parse_set

BENCHMARK_HELP = (
    "data: phantom (default, generated), mni152 (real brain anatomy from the MNI152 "
    "template in nilearn), folder:PATH (SITE/images + SITE/masks PNG), prostate:PATH "
    "(SITE/CaseXX.nii.gz + CaseXX_segmentation.nii.gz) or fundus:PATH "
    "(DomainN/.../image + .../mask PNG)"
)


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", default=None, metavar="SPEC", help=BENCHMARK_HELP)
    p.add_argument(
        "--target",
        default=None,
        choices=("auto", "disc", "cup"),
        help="what to segment: auto (the benchmark's target) or, for fundus, disc or cup",
    )


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        metavar="auto|HOST:PORT",
        help="join a running Ray cluster instead of starting one (runtime.address)",
    )
    p.add_argument(
        "--site-resources",
        default=None,
        metavar="NAME=RESOURCE,...",
        help="pin each named site's actor to a node that offers that custom Ray resource, as a "
        "hospital's data stays on its own machine (runtime.site_resources)",
    )


def add_set(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=text,
    )


def add_site_selection(p: argparse.ArgumentParser, profile: str = "quick") -> None:
    p.add_argument(
        "--sites",
        type=int,
        default=None,
        help="number of sites (default 6 of a generated benchmark, every site of a user data set)",
    )
    p.add_argument(
        "--profile", default=profile, choices=PROFILES, help=f"sizes (default {profile})"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="run seed (sets the train/test split; default 0)"
    )


def data_overrides(args: argparse.Namespace) -> dict[str, dict]:
    data = {}
    if args.benchmark is not None:
        data["benchmark"] = args.benchmark
    if args.target is not None:
        data["target"] = args.target
    return {"data": data} if data else {}


def cluster_overrides(args: argparse.Namespace) -> dict[str, dict]:
    runtime = {}
    if args.address:
        runtime["address"] = args.address
    if args.site_resources:
        runtime["site_resources"] = args.site_resources
    return {"runtime": runtime} if runtime else {}


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved config for ``smg-sim run``."""
    cli: dict[str, dict] = {"run": {"order": args.order}}
    if args.sites is not None:
        cli["run"]["sites"] = args.sites
    elif args.order not in ORDER_KEYWORDS:
        cli["run"]["sites"] = len([n for n in args.order.split(",") if n.strip()])
    for key in ("method", "seed", "out"):
        if getattr(args, key) is not None:
            cli["run"][key] = getattr(args, key)
    cli.update(data_overrides(args))
    if args.num_cpus is not None:
        cli.setdefault("runtime", {})["num_cpus"] = args.num_cpus
    if args.no_dashboard:
        cli.setdefault("runtime", {})["dashboard"] = False
    if args.engine:
        cli.setdefault("runtime", {})["engine"] = args.engine
    if args.privacy:
        cli.setdefault("privacy", {})["mode"] = args.privacy
    if args.exports:
        cli.setdefault("privacy", {})["exports"] = args.exports
    if args.allow_non_private:
        cli.setdefault("privacy", {})["allow_non_private"] = True
    cli = merge(cli, cluster_overrides(args))
    if args.inject_fault:
        cli.setdefault("runtime", {})["inject_fault"] = ",".join(args.inject_fault)
    return build_config(args.profile, merge(cli, parse_set(args.overrides)))


def compare_config(args: argparse.Namespace) -> Config:
    overrides = parse_set(args.overrides)
    if args.sites is not None:
        overrides.setdefault("run", {})["sites"] = args.sites
    overrides = merge(data_overrides(args), cluster_overrides(args), overrides)
    if args.num_cpus is not None:
        overrides.setdefault("runtime", {})["num_cpus"] = args.num_cpus
    if args.allow_non_private:
        overrides.setdefault("privacy", {})["allow_non_private"] = True
    overrides.setdefault("runtime", {}).setdefault("dashboard", False)
    return build_config(args.profile, overrides)


def data_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    run_values = {"seed": args.seed, **({"sites": args.sites} if args.sites is not None else {})}
    return build_config(
        args.profile, merge({"run": run_values}, data_overrides(args), parse_set(overrides))
    )
