"""The run plan: everything about a run that is validated and resolved once, before work starts.

Sites, visiting order, each site's spec and resource pin, the method with its resolved
hyper-parameters, the egress-guard mode and the SMD backbone's spec are decided here; the
engine, the learner and the results writer receive the plan and decide nothing again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.methods import method_class
from simulator.benchmarks import catalog
from simulator.benchmarks.order import resolve_order, resolve_sites
from simulator.config import Config
from simulator.driver.faults import Fault, parse_faults
from simulator.errors import ConfigError
from simulator.method import HValue, Method, resolve_hparams
from simulator.paths import site_data_root
from simulator.payloads import SiteSpec
from simulator.seeding import derive_seed
from sites.settings import SiteSettings

if TYPE_CHECKING:
    from simulator.smd.backbone import SMDSpec


@dataclass(frozen=True)
class RunPlan:
    """A validated run: everything the engine, the learner and the writers need, resolved once.

    Nothing downstream derives any of these again: the sites' specs, their resource pins, the SMD
    backbone's spec, the method's class and hyper-parameters come from here.
    """

    config: Config
    sites: list[str]
    order: list[str]
    #: each site's spec: what it builds its private data from, inside its own process
    specs: dict[str, SiteSpec]
    #: sites pinned to a node by a custom resource (``runtime.site_resources``): site -> resource
    pins: dict[str, str]
    out: Path
    method: type[Method]
    hparams: dict[str, HValue]
    #: the egress guard's mode: the configured one, or ``record`` for a non-private reference
    guard_mode: str
    #: the public SMD backbone's spec when the run uses SMD (replay or prompt-only), else None
    smd: SMDSpec | None = None
    #: where prompts and replay figures are shared between the runs of a grid (None: not shared)
    reuse: Path | None = None
    #: faults to inject (``runtime.inject_fault``), checked against the sites and stages
    faults: tuple[Fault, ...] = ()

    @property
    def smd_on(self) -> bool:
        """Whether the run uses SMD (a replay method, prompt-only exports or ``smd.enabled=on``)."""
        return self.smd is not None

    @property
    def data_root(self) -> Path:
        """The folder that holds every site's data folder (what the file-access trace watches)."""
        return catalog.data_root(self.config.data.benchmark)

    @property
    def trace_dir(self) -> Path:
        """The run's file-access traces: one file per process role."""
        return self.out / "file_access"

    @property
    def settings(self) -> dict[str, SiteSettings]:
        """Each site's own settings, as the operator of the simulated sites gives them."""
        return site_settings(
            self.config,
            self.specs,
            self.guard_mode,
            self.trace_dir,
            self.out.name,
            run=run_identity(self.out),
        )


def run_identity(out: Path) -> str:
    """The run's identity for its sites' budgets: the folder's name and a random tag made when
    the run starts (kept in ``run-id``, so a resumed run is the same run)."""
    import secrets

    path = Path(out) / "run-id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{Path(out).name}-{secrets.token_hex(8)}\n")
    return path.read_text().strip()


def site_log(spec: SiteSpec, run_name: str) -> str:
    """Where a site keeps the details of its failures during a run: in its own folder."""
    return str(Path(spec.data_dir) / ".smg-sim-logs" / f"{run_name}.log") if spec.data_dir else ""


def site_settings(
    cfg: Config,
    specs: dict[str, SiteSpec],
    guard_mode: str,
    trace_dir: Path | None,
    run_name: str,
    run: str = "",
) -> dict[str, SiteSettings]:
    """The settings the driver, as the operator of simulated sites, gives each site: its spec,
    the guard's mode, its trace and log files (named ``run_name``), the device and threads, its
    DP settings and budgets (counted per ``run``: the run's identity, "" for a node's)."""
    rt, priv = cfg.runtime, cfg.privacy
    return {
        name: SiteSettings(
            name=name,
            spec=spec,
            guard_mode=guard_mode,
            trace_file=str(trace_dir / f"site-{name}.jsonl") if trace_dir else "",
            log_file=site_log(spec, run_name),
            device=rt.device,
            torch_threads=rt.torch_threads,
            dp_epsilon=priv.dp_epsilon,
            dp_delta=priv.dp_delta,
            dp_clip=priv.dp_clip,
            dp_train_share=priv.dp_train_share if priv.exports == "model" else 0.0,
            dp_train_clip=priv.dp_train_clip,
            dp_budget=priv.dp_budget,
            run=run,
            scalar_bits_cap=priv.scalar_bits_cap,
            nn_threshold=priv.nn_threshold,
        )
        for name, spec in specs.items()
    }


def method_hparams(cfg: Config, name: str) -> dict[str, HValue]:
    """The resolved hyper-parameters of method ``name`` under ``cfg`` (``train.lr`` is the default
    lr)."""
    return resolve_hparams(method_class(name), cfg.train.lr, cfg.methods.get(name, {}))


def run_sites(cfg: Config) -> list[str]:
    """The sites of a run of ``cfg``: ``--sites 0`` takes the benchmark's default number."""
    spec = cfg.data.benchmark
    return resolve_sites(
        cfg.run.order, cfg.run.sites, catalog.site_names(spec), catalog.default_sites(spec)
    )


def site_specs(cfg: Config, names: list[str]) -> dict[str, SiteSpec]:
    """The spec from which each named site builds its own data (the one place specs are made).

    A site's ``site_index`` is its position in its benchmark's catalogue (it picks, e.g., a
    generated site's scanner). ``data_dir`` is the site's own folder: where a generated benchmark
    is cached (on the simulated site's disk under the user cache) or where a user data set keeps
    this site.
    """
    catalogue = catalog.site_names(cfg.data.benchmark)
    return {n: _site_spec(cfg, n, catalogue.index(n)) for n in names}


def _site_spec(cfg: Config, name: str, index: int) -> SiteSpec:
    d = cfg.data
    kind = catalog.kind(d.benchmark)
    if catalog.is_user_data(d.benchmark):
        data_dir = str(catalog.site_dir(d.benchmark, name))
    else:
        data_dir = str(site_data_root() / kind / name)
    return SiteSpec(
        benchmark=kind,
        site=name,
        site_index=index,
        seed=derive_seed(cfg.run.seed, "data", d.benchmark, name),
        image_size=d.image_size,
        n_train=d.n_train,
        n_test=d.n_test,
        target=d.target,
        test_fraction=d.test_fraction,
        data_dir=data_dir,
    )


def default_out(cfg: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.run.method}-{cfg.run.profile}-s{cfg.run.seed}"


def smd_needed(cfg: Config, method: type[Method]) -> bool:
    """Whether a run of ``method`` under ``cfg`` uses SMD (the method replays, prompt-only exports,
    or ``smd.enabled=on``)."""
    return method.uses_replay or cfg.smd.enabled == "on" or cfg.privacy.exports == "prompt"


def site_resources(mapping: str, names: list[str]) -> dict[str, str]:
    """``runtime.site_resources`` (NAME=RESOURCE,...) as {site: resource}, checked against the
    run."""
    out = {}
    for item in (t.strip() for t in mapping.split(",") if t.strip()):
        site, sep, resource = item.partition("=")
        if not sep or not site or not resource:
            raise ConfigError(f"runtime.site_resources: {item!r}; expected NAME=RESOURCE")
        if site not in names:
            raise ConfigError(
                f"runtime.site_resources: {site!r} is not a site of this run; "
                f"expected one of {', '.join(names)}"
            )
        out[site] = resource
    return out


def check_method(cfg: Config, name: str) -> type[Method]:
    """The method's class, if ``cfg`` may run it (non-private references need the explicit flag)."""
    cls = method_class(name)  # unknown names list the known ones
    if not cls.private and not cfg.privacy.allow_non_private:
        raise ConfigError(
            f"method {cls.name!r} is a non-private reference: it moves real images out of "
            "sites; run it only with --allow-non-private (its privacy audit will fail)"
        )
    return cls


def plan_run(cfg: Config, reuse: Path | None = None, new_folder: bool = True) -> RunPlan:
    """Validate everything that can be checked before work starts (no side effects).

    ``reuse``: a folder of per-(seed, site) artifacts shared by the runs of a comparison.
    ``new_folder``: the run folder must not hold a run yet (False: resuming one).
    """
    from simulator.driver.runfolder import check_new

    cls = check_method(cfg, cfg.run.method)
    for name in cfg.methods:  # every per-method table is checked, not only the running method's
        method_hparams(cfg, name)
    smd_on = smd_needed(cfg, cls)
    if smd_on and cfg.smd.enabled == "off":
        why = f"method {cls.name!r} needs SMD replay" if cls.uses_replay else "prompt-only exports"
        raise ConfigError(f"smd.enabled: {why} need SMD; use auto or on")
    if cfg.privacy.exports == "prompt" and not cls.private:
        raise ConfigError(
            f"privacy.exports=prompt: {cls.name!r} needs real images at the learner; prompt-only "
            f"mode trains on synthetic images of each site"
        )
    priv = cfg.privacy
    if priv.dp_epsilon > 0 and priv.exports == "model" and cls.private:
        why = cls.dp_check(method_hparams(cfg, cls.name))
        if why:
            raise ConfigError(
                f"privacy.dp_epsilon={priv.dp_epsilon:g}: method {cls.name!r} cannot train under "
                f"DP at a site: {why}"
            )
        if priv.dp_train_share <= 0:
            raise ConfigError(
                "privacy.dp_train_share=0 leaves no budget for training at the sites in model "
                "mode; set a share in (0, 1) or use privacy.exports=prompt"
            )
        if smd_on and priv.dp_train_share >= 1:
            raise ConfigError(
                f"privacy.dp_train_share=1 leaves no budget for the prompts {cls.name!r} needs; "
                f"set a share in (0, 1)"
            )
    smd = None
    if smd_on:
        from simulator.smd.pretrain import smd_spec

        try:  # the public pools are single-channel: a site with other images fails at its facts
            smd = smd_spec(cfg, 1)
        except ConfigError as exc:
            raise ConfigError(f"method {cls.name!r} needs SMD replay: {exc}") from None
    sites = run_sites(cfg)
    order = resolve_order(cfg.run.order, sites, cfg.run.seed)
    pins = site_resources(cfg.runtime.site_resources, order)
    faults = parse_faults(cfg.runtime.inject_fault, order)
    if any(f.kind == "kill-site" for f in faults) and cfg.runtime.engine != "ray":
        raise ConfigError(
            f"runtime.inject_fault: kill-site needs the Ray engine (it restarts site actors); "
            f"runtime.engine={cfg.runtime.engine} fails the run instead, which can be resumed"
        )
    out = Path(cfg.run.out) if cfg.run.out else default_out(cfg)
    if new_folder:
        check_new(out)
    return RunPlan(
        config=cfg,
        sites=sites,
        order=order,
        specs=site_specs(cfg, order),
        pins=pins,
        out=out,
        method=cls,
        hparams=method_hparams(cfg, cls.name),
        guard_mode=cfg.privacy.mode if cls.private else "record",
        smd=smd,
        reuse=reuse,
        faults=faults,
    )
