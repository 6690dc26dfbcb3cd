"""What the privacy audit reads from a run folder, and nothing else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.driver.ledger import read_ledger
from simulator.filetrace import read_trace, trace_files


@dataclass(frozen=True)
class RunFiles:
    """What the audit reads from a run folder; nothing else is consulted."""

    run_dir: Path
    config: dict[str, Any]
    sites_info: dict[str, Any]
    guard: dict[str, Any]
    smd: dict[str, Any]
    ledger: list[dict[str, Any]]
    trace: list[dict[str, Any]]
    #: where each actor ran, per start of the run's driver (actors.json; empty for older folders)
    actors: dict[str, Any]
    #: each trace file of the run and how many accesses it holds
    trace_files: dict[str, int]
    #: where each trace file is (the run's ``file_access`` folder, or a node's own)
    trace_paths: dict[str, Path]
    #: the driver's own record (``runtime.json``: engine, pid and start of the driver)
    runtime: dict[str, Any]
    #: one line per stage (``stages.jsonl``: the visited site and what its visit reported)
    stages: list[dict[str, Any]] = ()

    @property
    def sites(self) -> list[str]:
        """The sites in the order the run visited them."""
        return self.sites_info["order"]

    @property
    def facts(self) -> dict[str, dict[str, Any]]:
        """Per-site facts (image size, data bytes) recorded when the run started."""
        return self.sites_info.get("facts", {})


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_optional_json(path: Path) -> Any:
    """A file a run may lack (no guard report, no SMD): an empty dict then."""
    return _read_json(path) if path.exists() else {}


def read_run_files(run_dir: Path, node_traces: list[Path] = ()) -> RunFiles:
    """Read the files of a run folder that the audit is built from; ``node_traces``: folders of
    the trace files that deployed nodes kept (each site's node writes its own)."""
    run_dir = Path(run_dir)
    trace_dir = run_dir / "file_access"
    trace = read_trace(trace_dir) if trace_dir.exists() else []
    files = trace_files(trace_dir) if trace_dir.exists() else {}
    paths = {p.name: p for p in sorted(trace_dir.glob("*.jsonl"))} if trace_dir.exists() else {}
    for folder in node_traces:
        trace += read_trace(Path(folder))
        files.update(trace_files(Path(folder)))
        paths.update({p.name: p for p in sorted(Path(folder).glob("*.jsonl"))})
    return RunFiles(
        run_dir=run_dir,
        config=_read_json(run_dir / "config.json"),
        sites_info=_read_json(run_dir / "sites.json"),
        guard=_read_optional_json(run_dir / "guard.json"),
        smd=_read_optional_json(run_dir / "smd.json"),
        ledger=read_ledger(run_dir / "ledger.jsonl"),
        trace=trace,
        actors=_read_optional_json(run_dir / "actors.json"),
        trace_files=files,
        trace_paths=paths,
        runtime=_read_optional_json(run_dir / "runtime.json"),
        stages=_read_lines(run_dir / "stages.jsonl"),
    )


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file a run may lack (an empty list then)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
