"""The operator's commands on sites: previews and inspections of their data.

Each runs the site in a process of its own (a Ray actor) and reaches it through its entry
point with the operator's token; only sizes, statistics and the reader's problems come back.
Every message goes to a ledger and every site's file access to a trace, in a record folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
from pathlib import Path

from simulator.benchmarks import catalog
from simulator.config import Config
from simulator.driver.ledger import Ledger
from simulator.driver.plan import run_sites, site_settings, site_specs
from simulator.errors import AccessViolation, ConfigError, SiteFailure
from simulator.messages import metrics
from simulator.payloads import InspectReply, PreviewRequest, is_error


def _record_folder(kind: str, record: Path | None) -> Path:
    """The folder where a ``data`` command keeps its ledger and file-access trace."""
    record = (
        Path(record) if record else Path("runs") / f"{kind}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}"
    )
    record.mkdir(parents=True, exist_ok=False)
    return record.resolve()


def _check_trace(record: Path, cfg: Config) -> None:
    """Each site touched only its own data, or an AccessViolation names who did what."""
    from simulator.driver.audit.checks import file_access
    from simulator.filetrace import read_trace

    check, _ = file_access(
        read_trace(record / "file_access"), str(catalog.data_root(cfg.data.benchmark))
    )
    (record / "file_access_check.json").write_text(json.dumps(check, indent=2) + "\n")
    if check["verdict"] != "pass":
        raise AccessViolation(f"{record}: {check['detail']}")


def _operate(cfg: Config, record: Path, kind: str, op: str, payload_for, allow_real: bool = False):
    """Start every site of ``cfg`` as a Ray actor, ask each for operation ``op`` with the
    operator's token, and return the replies by site (recorded in ``record/ledger.jsonl``)."""
    from server.methods import build_method
    from simulator.driver.engine import ray_actors

    sites = run_sites(cfg)
    settings = site_settings(
        cfg,
        site_specs(cfg, sites),
        cfg.privacy.mode,
        record / "file_access",
        kind,
        run=f"{kind}-{record.name}-{secrets.token_hex(4)}",
    )
    settings = {
        n: dataclasses.replace(s, allow_real_previews=allow_real) for n, s in settings.items()
    }
    ray_actors.start_ray(cfg.runtime, dashboard=False)
    backend = ray_actors.RayBackend(
        settings, build_method, f"smg-sim-{kind}-{os.getpid()}", secrets.token_hex(16)
    )
    ledger = Ledger(record / "ledger.jsonl")
    try:
        pending = {}
        for n in sites:
            msg = payload_for(n)
            if msg is not None:
                ledger.record(msg)
            pending[n] = backend.operator(n, op, msg)
        out = {}
        for n in sites:
            reply = pending[n].result()
            ledger.record(reply)
            if is_error(reply):
                raise SiteFailure(n, op, str(reply["config"]["error"]), log=settings[n].log_file)
            out[n] = reply
        return out
    finally:
        ledger.close()
        backend.shutdown()


def write_site_previews(
    cfg: Config, folder: Path | None, allow_real: bool = False, record: Path | None = None
) -> tuple[list[Path], Path]:
    """Have every site of ``cfg`` save a preview of its data (one PNG per site).

    Generated (simulated) sites write into ``folder``. Sites of a user data set hold real images:
    they write only with ``allow_real`` (their operator's consent, in their own settings), into
    their own data folder unless ``folder`` is given. The messages and every site's file access
    go to ``record`` (default ``runs/preview-<time>``); returns the PNG paths and that folder.
    """
    real = catalog.is_user_data(cfg.data.benchmark)
    if real and not allow_real:
        raise ConfigError(
            f"data preview: {cfg.data.benchmark} holds real images; pass --allow-real-previews to "
            f"write previews of them (each into its own site folder unless --out is given)"
        )
    if folder is None and not real:
        raise ConfigError("data preview: --out is needed for a generated benchmark")
    rec = _record_folder("preview", record)
    target = str(Path(folder).resolve()) if folder is not None else ""

    def request(n: str):
        return PreviewRequest(target, 3, real).to_record("driver", f"site:{n}")

    replies = _operate(cfg, rec, "preview", "preview", request, allow_real=allow_real)
    _check_trace(rec, cfg)
    for reply in replies.values():
        metrics(reply)["bytes_written"]  # every site wrote one
    return [
        Path(target) / f"{n}.png"
        if target
        else catalog.site_dir(cfg.data.benchmark, n) / f"{n}.png"
        for n in replies
    ], rec


def inspect_data(cfg: Config, record: Path | None = None) -> dict[str, tuple[dict, list[str]]]:
    """Per site of ``cfg``: statistics of its data and the problems its reader found.

    The readers run inside one actor per site; only scalars and the problems (which name the
    site's own files, for its operator) come back. The replies and every site's file access go
    to ``record`` (default ``runs/inspect-<time>``).
    """
    rec = _record_folder("inspect", record)
    replies = _operate(cfg, rec, "inspect", "inspect", lambda n: None)
    _check_trace(rec, cfg)
    out = {}
    for n, raw in replies.items():
        reply = InspectReply.from_record(raw)
        out[n] = (dict(reply.values), list(reply.problems))
    return out
