"""The ``smg-sim flower`` sub-parser: a local deployment (up, down) and the settings of a
Flower simulation's nodes."""

from __future__ import annotations

import argparse

from simulator.driver.cli_options import add_set, add_site_selection


def add_flower(sub) -> None:
    """``smg-sim flower up | settings | down``."""
    fl = sub.add_parser(
        "flower",
        help="a local Flower deployment: a SuperLink and one SuperNode per site",
        description="up: start flower-superlink and one flower-supernode per site on 127.0.0.1 "
        "(insecure mode; every SuperNode a process of its own with its own settings file: its "
        "site, data folder, guard mode, trace and log; an SMD cache of its own), record their "
        "ids in DIR/deployment.json and print the flwr run command; down: stop exactly the "
        "processes up started.",
    )
    fl_sub = fl.add_subparsers(dest="flower_command", required=True)
    up = fl_sub.add_parser("up", help="start the SuperLink and the SuperNodes")
    up.add_argument(
        "--benchmark",
        default="phantom",
        metavar="SPEC",
        help="phantom (default) or mni152, generated on each node",
    )
    up.add_argument(
        "--target", default=None, choices=("auto", "disc", "cup"), help=argparse.SUPPRESS
    )
    add_site_selection(up, profile="smoke")
    add_set(up, "a node setting, e.g. --set privacy.mode=strict (repeatable)")
    up.add_argument(
        "--dir",
        default="runs/flower-local",
        help="where the deployment's state and logs go (default runs/flower-local)",
    )
    prep = fl_sub.add_parser(
        "settings",
        help="write the settings of the nodes of a Flower simulation on this machine (flwr run)",
        description="As the operator of a Flower simulation's nodes: one partition-<id>.json per "
        "site in $SMG_SIM_NODE_SETTINGS (default: beside the simulated sites' disks); a node "
        "reads its own, the run only checks them.",
    )
    prep.add_argument(
        "--benchmark", default="phantom", metavar="SPEC", help="phantom (default) or mni152"
    )
    prep.add_argument(
        "--target", default=None, choices=("auto", "disc", "cup"), help=argparse.SUPPRESS
    )
    add_site_selection(prep, profile="quick")
    add_set(prep, "a node setting, e.g. --set privacy.mode=strict (repeatable)")
    down = fl_sub.add_parser("down", help="stop the processes a `flower up` started")
    down.add_argument("--dir", default="runs/flower-local", help="the folder given to flower up")
