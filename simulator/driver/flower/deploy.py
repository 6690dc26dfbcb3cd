"""``smg-sim flower up`` / ``down``: a local Flower deployment, every site a SuperNode process.

``up`` starts one ``flower-superlink`` and one ``flower-supernode`` per site on 127.0.0.1
(insecure mode), each in a process group of its own, its own settings file named in its node
config (``settings=PATH``: the site, its data folder, guard, trace and log); it records the
process ids in ``DIR/deployment.json`` and writes a Flower config (``DIR/flwr/config.toml``)
naming the SuperLink, then prints the ``flwr run`` command.
A SuperNode starts a ``flwr-clientapp`` process for every message it receives, so each site's
data is read only by processes of its own SuperNode. ``down`` stops exactly the process groups
it recorded (the SuperLink's, and every SuperNode's with the ClientApp processes they started).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from simulator.benchmarks import catalog
from simulator.config import Config
from simulator.driver.plan import run_sites, site_log, site_settings, site_specs
from simulator.driver.processes import pid_alive
from simulator.errors import ConfigError

STATE = "deployment.json"
#: how long each process may take to start listening (seconds)
START_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _binary(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise ConfigError(
            f"{name} not found next to {sys.executable} or on PATH; install flwr[simulation]"
        )
    return found


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = log.open("ab")
    try:  # a process group of its own: down stops it with every process it started
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        fh.close()


def _wait_listening(proc: subprocess.Popen, port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not _listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not listen on 127.0.0.1:{port} within {START_SECONDS:g} s; see {log}"
            )
        time.sleep(0.3)


def read_state(folder: Path) -> dict | None:
    path = Path(folder) / STATE
    return json.loads(path.read_text()) if path.exists() else None


def node_folders(folder: Path, benchmark: str, site: str) -> tuple[Path, Path]:
    """A SuperNode's own folders: its site's data (``data-dir`` in its node config: the site's
    folder of a user data set, or ``DIR/data/SITE`` where a generated benchmark is kept) and its
    cache (``SMG_SIM_CACHE``: the SMD backbone it receives), as a hospital's machine has its own
    disk."""
    data_dir = (
        catalog.site_dir(benchmark, site)
        if catalog.is_user_data(benchmark)
        else folder / "data" / site
    )
    for path in (data_dir, folder):
        if any(c in str(path) for c in "'\"\n"):
            raise ConfigError(
                f"{path}: a path with quotes or newlines cannot go into a Flower node config"
            )
    return data_dir.resolve(), (folder / "nodes" / site / "cache").resolve()


def write_settings(folder: Path, cfg: Config) -> dict[str, Path]:
    """Each node's own settings file (``DIR/nodes/SITE/settings.json``), as its operator writes
    it: the site's data spec with the node's own data folder, the guard's mode, the node's trace
    (``DIR/file_access/site-SITE.jsonl``, which it keeps: ``smg-sim audit RUN --node-traces
    DIR/file_access`` reads them) and log, its device and DP settings."""
    names = run_sites(cfg)
    specs = site_specs(cfg, names)
    settings = site_settings(cfg, specs, cfg.privacy.mode, folder / "file_access", "node")
    out = {}
    for name in names:
        data_dir, _ = node_folders(folder, cfg.data.benchmark, name)
        spec = dataclasses.replace(specs[name], data_dir=str(data_dir))
        # the site's log in its own folder (a site writes nowhere else), as a simulated site's
        own = dataclasses.replace(settings[name], spec=spec, log_file=site_log(spec, "node"))
        out[name] = folder / "nodes" / name / "settings.json"
        own.write(out[name])
    return out


def up(folder: Path, cfg: Config) -> dict:
    """Start the SuperLink and one SuperNode per site of ``cfg`` (its benchmark, sites, profile
    and privacy settings); returns the recorded deployment."""
    folder = Path(folder).resolve()
    benchmark = cfg.data.benchmark
    old = read_state(folder)
    if old and any(pid_alive(p["pid"]) for p in old["processes"]):
        raise ConfigError(
            f"{folder / STATE}: a deployment started there is still running; "
            f"stop it first with: smg-sim flower down --dir {folder}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    node_settings = write_settings(folder, cfg)
    names = list(node_settings)
    # the SuperLink and SuperNodes start Flower's other executables (flower-superexec, flwr-
    # serverapp, flwr-clientapp) by name: this environment's come first
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    link_port = _free_port()
    processes: list[dict] = []
    state = {
        "dir": str(folder),
        "superlink": f"127.0.0.1:{link_port}",
        "sites": names,
        "benchmark": benchmark,
        "profile": cfg.run.profile,
        "seed": cfg.run.seed,
        "started": time.time(),
        "processes": processes,
    }

    def record() -> None:
        (folder / STATE).write_text(json.dumps(state, indent=2))

    try:
        log = folder / "superlink.log"
        link = _start(
            [
                _binary("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--database",
                str(folder / "superlink.db"),
                "--disable-runtime-dependency-installation",
            ],
            log,
            env,
        )
        processes.append({"role": "superlink", "pid": link.pid, "pgid": link.pid, "log": str(log)})
        record()
        _wait_listening(link, link_port, "flower-superlink", log)
        nodes = []
        for name in names:
            port = _free_port()
            log = folder / f"supernode-{name}.log"
            data_dir, cache = node_folders(folder, benchmark, name)
            node_env = {
                **env,
                "SMG_SIM_CACHE": str(cache),
            }  # the node's own SMD cache: the backbone travels
            node = _start(
                [
                    _binary("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--node-config",
                    f"settings='{node_settings[name]}'",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                log,
                node_env,
            )
            processes.append(
                {
                    "role": f"supernode:{name}",
                    "site": name,
                    "pid": node.pid,
                    "pgid": node.pid,
                    "port": port,
                    "log": str(log),
                    "data_dir": str(data_dir),
                    "cache": str(cache),
                }
            )
            record()
            nodes.append((node, port, name, log))
        for node, port, name, log in nodes:
            _wait_listening(node, port, f"flower-supernode of site {name}", log)
    except BaseException:
        down(folder)
        raise
    home = folder / "flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "smg-local"\n\n[superlink.smg-local]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    state["flwr_home"] = str(home)
    record()
    return state


def run_command(state: dict, out: str = "") -> str:
    """The ``flwr run`` command that runs the app against the deployment (from the project
    folder), with the profile, seed and benchmark its nodes' settings hold."""
    cfg = (
        f"sites={len(state['sites'])} order='fixed' profile='{state['profile']}' "
        f"seed={state['seed']} benchmark='{state['benchmark']}'"
    )
    if out:
        cfg += f" out='{out}'"
    return f'FLWR_HOME={state["flwr_home"]} flwr run . smg-local --stream --run-config "{cfg}"'


def _group_gone(p: dict) -> bool:
    """Whether no process of the recorded group is left (a leader this process started is
    reaped)."""
    try:
        os.waitpid(p["pid"], os.WNOHANG)
    except ChildProcessError:  # not this process's child (up ran in another process)
        pass
    try:
        os.killpg(p["pgid"], 0)
    except ProcessLookupError:
        return True
    return False


def down(folder: Path) -> list[str]:
    """Stop every process group the deployment in ``folder`` recorded; returns what was stopped."""
    folder = Path(folder).resolve()
    state = read_state(folder)
    if state is None:
        raise ConfigError(f"{folder / STATE}: no deployment recorded there")
    stopped = []
    for p in reversed(state["processes"]):
        try:
            os.killpg(p["pgid"], signal.SIGTERM)
            stopped.append(f"{p['role']} (process group {p['pgid']})")
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    for p in state["processes"]:
        while not _group_gone(p):
            if time.monotonic() > deadline:
                try:
                    os.killpg(p["pgid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.2)
    (folder / STATE).rename(folder / f"{STATE}.stopped-{int(time.time())}")
    return stopped
