"""Per-stage checkpoints of a run, and what ``smg-sim resume`` reads back.

After every stage the driver writes, atomically, everything the run needs to continue:

    checkpoint/stage-<k>/arrays.npz   the learner's weights, method state, prompts (the learner's,
    the only copy) and replay bank
    checkpoint/stage-<k>/state.json   the stage, R so far, the ledger's and the stage log's byte
                                      offsets, per-site SMD figures, each site's guard report,
                                      seconds per phase, restarts, shared-artifact reuse
    checkpoint/LATEST                 the name of the newest complete stage folder (replaced last)

No random stream carries state from one stage to the next (every stage, visit and site draws
from a seed derived from the run seed), so these files are all that is needed to continue and
give the same results as a run that never stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.driver.runfolder import write_json

FOLDER = "checkpoint"


@dataclass
class Checkpoint:
    """One stage's checkpoint: ``stage`` finished, ``R`` its rows 0..stage, and the run's state."""

    stage: int
    R: np.ndarray
    snapshot: dict[str, Any]
    ledger_bytes: int
    ledger_count: int
    ledger_total_bytes: int
    stages_bytes: int
    elapsed_seconds: float
    smd_info: dict[str, Any]


def _split_arrays(snapshot: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays (to the npz) and the JSON-able rest of an engine snapshot."""
    arrays = {f"learner/{k}": v for k, v in snapshot["learner"]["arrays"].items()}
    rest = {k: v for k, v in snapshot.items() if k != "learner"}
    rest["learner_facts"] = snapshot["learner"]["facts"]
    return arrays, rest


def write_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` under ``run_dir/checkpoint/`` and make it the latest; older ones are
    removed."""
    root = Path(run_dir) / FOLDER
    name = f"stage-{ckpt.stage:03d}"
    tmp = root / f".{name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    arrays, rest = _split_arrays(ckpt.snapshot)
    with (tmp / "arrays.npz").open("wb") as fh:
        np.savez(fh, **arrays)
    write_json(
        tmp / "state.json",
        {
            "stage": ckpt.stage,
            "R": ckpt.R[: ckpt.stage + 1].tolist(),
            "engine": rest,
            "ledger": {
                "bytes": ckpt.ledger_bytes,
                "count": ckpt.ledger_count,
                "total_bytes": ckpt.ledger_total_bytes,
            },
            "stages_bytes": ckpt.stages_bytes,
            "elapsed_seconds": ckpt.elapsed_seconds,
            "smd_info": ckpt.smd_info,
        },
    )
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = root / ".LATEST.tmp"
    latest.write_text(name + "\n")
    os.replace(latest, root / "LATEST")
    for old in root.glob("stage-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(run_dir: Path, n_sites: int) -> Checkpoint | None:
    """The latest checkpoint of ``run_dir`` (None if it has none)."""
    root = Path(run_dir) / FOLDER
    if not (root / "LATEST").exists():
        return None
    folder = root / (root / "LATEST").read_text().strip()
    state = json.loads((folder / "state.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    R = np.zeros((n_sites + 1, n_sites))
    rows = np.array(state["R"], dtype=float)
    R[: len(rows)] = rows
    engine = dict(state["engine"])
    learner = {
        "arrays": {k[len("learner/") :]: v for k, v in arrays.items() if k.startswith("learner/")},
        "facts": engine.pop("learner_facts"),
    }
    snapshot = {**engine, "learner": learner}
    return Checkpoint(
        state["stage"],
        R,
        snapshot,
        state["ledger"]["bytes"],
        state["ledger"]["count"],
        state["ledger"]["total_bytes"],
        state["stages_bytes"],
        state["elapsed_seconds"],
        state["smd_info"],
    )


def cut_logs(run_dir: Path, ckpt: Checkpoint) -> int:
    """Cut the stage log back to the checkpoint and mark the ledger's later lines as retries.

    Lines a stage wrote after its checkpoint belong to work that is done again on resume; the
    stage log drops them, the ledger keeps them (they did cross) marked ``"retry"``. Returns how
    many ledger lines were marked.
    """
    run_dir = Path(run_dir)
    stages = run_dir / "stages.jsonl"
    with stages.open("r+b") as fh:
        fh.truncate(ckpt.stages_bytes)
    ledger = run_dir / "ledger.jsonl"
    data = ledger.read_bytes()
    head, tail = data[: ckpt.ledger_bytes], data[ckpt.ledger_bytes :]
    lines = [json.loads(line) for line in tail.decode().splitlines() if line.strip()]
    if not lines:
        return 0
    marked = "".join(
        json.dumps(
            {**e, "retry": max(1, int(e.get("retry", 0))), "interrupted": True}, sort_keys=True
        )
        + "\n"
        for e in lines
    )
    tmp = ledger.with_suffix(".tmp")
    tmp.write_bytes(head + marked.encode())
    os.replace(tmp, ledger)
    return len(lines)
